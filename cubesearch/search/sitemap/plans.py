"""From the MILP's choice (site → option name) to the plan a model is built from, and its exact
cost: the cost model for Cube-only plans (equal to fvcore's count), the built model's fvcore
count when convs are narrowed (their cuts reach the next layers, so the cells' Δs need not add
up), and the latency model's prediction (with its correction) when there is one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cubesearch.blocks import CubeConfig
from cubesearch.search.context import SearchContext
from cubesearch.search.sitemap.cells import narrowed_cost
from cubesearch.search.sitemap.milp import Exact

Parts = tuple[dict[str, CubeConfig], dict[str, float]]


def plan_parts(data: Mapping[str, Any], options: Mapping[str, str]) -> Parts:
    """(site → CubeConfig, conv → width) of a choice, from the map's cells."""
    cells = {(c["site"], c["option"]): c for c in data["cells"]}
    sites, widths = {}, {}
    for site, option in options.items():
        cell = cells[(site, option)]
        if cell.get("width") is not None:
            widths[site] = float(cell["width"])
        elif cell.get("config"):
            sites[site] = CubeConfig.from_dict(cell["config"])
    return sites, widths


def plan_dict(parts: Parts) -> dict[str, Any]:
    """A plan's parts as JSON (`sites`: knobs per site; `widths`)."""
    sites, widths = parts
    return {"sites": {n: c.to_dict() for n, c in sites.items()}, "widths": dict(widths)}


def exact_costs(ctx: SearchContext, data: Mapping[str, Any]) -> Exact:
    """The exact (GFLOPs, params[, ms]) of a choice; raises if the plan cannot be built (two
    coupled convs narrowed to different widths). Counts are cached per plan."""
    cache: dict[str, dict[str, float]] = {}

    def exact(options: Mapping[str, str]) -> dict[str, float]:
        sites, widths = plan_parts(data, options)
        key = json.dumps(plan_dict((sites, widths)), sort_keys=True)
        if key not in cache:
            if widths:
                flops, params = narrowed_cost(ctx, widths, sites)
            else:
                flops, params = ctx.cost.cost(sites)
            costs = {"gflops": flops / 1e9, "params": float(params)}
            if ctx.latency is not None and not widths:
                costs["latency"] = ctx.latency.latency_ms(sites)
            cache[key] = costs
        return cache[key]

    return exact
