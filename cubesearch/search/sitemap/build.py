"""`site_map(model, ...)`: every searchable site × every option the space offers there, each
measured alone in the search's trained baseline (`cells`), recorded in `OUT/map.json` as it
goes (`store`) and drawn in `OUT/map.png` (`plot`).

The map answers the paper's "where do I insert the block?" for any model: a cell's ΔIoU is what
that one block costs or gains the trained model, its ΔGFLOPs what it saves. `build_map` is the
part a search shares (`search --strategy map`): it takes the search's own context, so the map
and the search's finalists start from one baseline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import file_lock
from cubesearch.core.logging import progress_enabled
from cubesearch.plan.checkpoint import check_destination
from cubesearch.search.context import SearchContext, build_context
from cubesearch.search.evaluators.finetune import prepare_baseline
from cubesearch.search.settings import SearchSettings
from cubesearch.search.sitemap.cells import CellJob, baseline_iou, cell_costs
from cubesearch.search.sitemap.milp import Choice, Exact, MapTable, resolve_limits, sweep, unmet_message
from cubesearch.search.sitemap.options import resolve_subset, site_options, subset_rule
from cubesearch.search.sitemap.plans import exact_costs
from cubesearch.search.sitemap.plot import plot_map
from cubesearch.search.sitemap.runner import run_cells
from cubesearch.search.sitemap.store import MapStore

PLOT_FILE = "map.png"


@dataclass
class SiteMap:
    """A finished map: map.json's content, where it is, and the plans the MILP predicts."""

    data: dict[str, Any]
    path: Path
    png: Path
    measured: int = 0  # cells this run measured (the rest were in map.json already)
    front: list[Choice] = field(default_factory=list)  # predicted front under `budgets`
    seconds: float = 0.0

    @property
    def table(self) -> MapTable:
        return MapTable.from_map(self.data)

    @property
    def cells(self) -> list[dict[str, Any]]:
        return list(self.data["cells"])

    def to_dict(self) -> dict[str, Any]:
        return {"map": str(self.path), "plot": str(self.png), "measured": self.measured,
                "baseline_iou": self.data["baseline_iou"], "subset": self.data["subset_rule"],
                "cells": self.cells, "predicted_front": [c.to_dict() for c in self.front]}


def map_jobs(ctx: SearchContext, subset: str) -> list[CellJob]:
    """Every (site, option) of the map, sites in data-flow order (the order the trace met them)."""
    return [CellJob(s.name, o) for s in ctx.searchable for o in site_options(ctx.space, s, subset)]


def map_header(ctx: SearchContext, subset: str, base_iou: float, seed: int) -> dict[str, Any]:
    """What map.json says besides its cells: what was measured, how, and what it is against."""
    s, lat = ctx.settings, ctx.latency
    # the baseline by its folder's name (its settings' hash): the same map wherever OUT is
    identity = {"model": s.model, "model_kwargs": s.model_kwargs,
                "baseline": ctx.baseline_dir.name if ctx.baseline_dir else None,
                "input_size": list(s.input_size), "distill_steps": s.distill_steps, "seed": seed,
                "batch_size": s.batch_size,
                "latency_device": lat.fingerprint.to_dict() if lat is not None else None}
    return {"model": s.model, "space": ctx.space.name, "subset": subset,
            "subset_rule": subset_rule(ctx.space, subset), "seed": seed, "baseline_seed": s.seed,
            "input_size": list(s.input_size), "baseline": str(ctx.baseline_dir),
            "baseline_iou": base_iou, "baseline_train_iou": ctx.baseline_metrics.get("iou"),
            "base_gflops": ctx.base_flops / 1e9, "base_params": ctx.base_params,
            "base_ms": lat.latency_ms({}) if lat is not None else None,
            "how": ("each option alone in the trained baseline, the block fitted by blockwise "
                    f"distillation for {s.distill_steps} batches (BatchNorm re-estimated), then "
                    "the model's IoU on the validation tiles; no end-to-end training"),
            "settings": {"data": s.data, "tile_size": s.tile_size, "train_tiles": s.train_tiles,
                         "val_tiles": s.val_tiles, "batch_size": s.batch_size,
                         "baseline_epochs": s.baseline_epochs or s.epochs_per_trial,
                         "distill_steps": s.distill_steps, "lr": s.lr},
            "sites": [{"name": x.name, "role": x.role, "in_channels": x.in_channels,
                       "out_channels": x.out_channels, "resolution": x.resolution}
                      for x in ctx.searchable],
            "identity": identity}


def build_map(ctx: SearchContext, *, subset: str = "auto", backend: str = "local",
              seed: int | None = None, console: Console | None = None, progress: bool = True
              ) -> SiteMap:
    """Measure the cells OUT/map.json lacks (the context's baseline prepared), write the plot.
    `seed` (default: the search's): every cell's block initialisation and distillation batches;
    the baseline and the data keep the search's seed."""
    t0 = time.perf_counter()
    console = console or Console(stderr=True)
    subset = resolve_subset(ctx.space, ctx.searchable, subset)
    jobs = map_jobs(ctx, subset)
    base = baseline_iou(ctx)
    seed = ctx.settings.seed if seed is None else seed
    store = MapStore.open(ctx.out, map_header(ctx, subset, base, seed))
    todo = [j for j in jobs if not store.has(j.key)]
    console.print(f"map: {len(jobs)} cells ({len(ctx.searchable)} sites; {store.header['subset_rule']}); "
                  f"{len(jobs) - len(todo)} in {store.path} already, {len(todo)} to measure; "
                  f"baseline IoU {base:.4f}")
    run_cells(ctx, todo, store, base, seed=seed, backend=backend, console=console, progress=progress)
    keys = [j.key for j in jobs]
    path = store.write(keys)
    data = json.loads(path.read_text())
    wanted = set(keys)  # this space's cells, in its order (the file may hold more)
    data["cells"] = [c for c in data["cells"] if (c["site"], c["option"]) in wanted]
    png = plot_map(data, ctx.out / PLOT_FILE)
    return SiteMap(data=data, path=path, png=png, measured=len(todo),
                   seconds=time.perf_counter() - t0)


def site_map(model: str, *, budgets: Sequence[str] = (), subset: str = "auto", backend: str = "local",
             map_seed: int | None = None, progress: bool = True, console: Console | None = None,
             **options: Any) -> SiteMap:
    """Build (or resume) the site map of `model` in `out` (default runs/search: the search's
    folder, whose trained baseline it reuses, or trains there).

    `options` are `search`'s (`SearchSettings` fields: out, space, data, tile_size, train_tiles,
    val_tiles, distill_steps, baseline_epochs, seed, latency_table, address, cpus_per_trial…);
    with a `latency_table` every cell also gets its Δms. `budgets` (`60%`, `12G`, `25ms`,
    `params:80%`…): the predicted front under them (`SiteMap.front`), swept along the first.
    `subset`: `all` configs, the `one-knob` subset, or `auto` (all while a site has ≤ 12).
    `map_seed` (default: `seed`): the cells' own seed (blocks' initial weights, distillation
    batches), so a map can be measured on another seed than the plans it predicts train on."""
    if options.get("latency_table"):
        options.setdefault("objectives", ("iou", "gflops", "latency"))
    settings = SearchSettings(model=model, budget="100%", strategy="map", backend=backend, **options)
    check_destination(settings.out, option="--out", replaceable=False)
    console = console or Console(stderr=True)
    show = progress_enabled(progress)
    ctx = build_context(settings)  # a space that is not per-site: refused there
    if budgets:  # a budget no plan meets, or a latency budget without a table: before any work
        check_budgets(ctx, map_jobs(ctx, resolve_subset(ctx.space, ctx.searchable, subset)), budgets)
    ctx.out.mkdir(parents=True, exist_ok=True)
    with file_lock(ctx.out / ".baseline.lock"):  # as a search: processes sharing --out prepare once
        prepare_baseline(ctx, progress=show, log=console.print)
    with file_lock(ctx.out / ".map.lock"):  # one process measures a map at a time
        result = build_map(ctx, subset=subset, backend=backend, seed=map_seed, console=console,
                           progress=show)
    if budgets:
        result.front = predicted_front(result.table, budgets, exact=exact_costs(ctx, result.data))
    return result


def check_budgets(ctx: SearchContext, jobs: Sequence[CellJob], budgets: Sequence[str]) -> None:
    """Refuse budgets that no plan of the map could meet (each cost at its cheapest option per
    site), from the cells' costs alone: nothing is measured yet."""
    lat = ctx.latency
    cells = [{"site": j.site, "option": j.option.name, "delta_iou": 0.0, **cell_costs(ctx, j)}
             for j in jobs]
    table = MapTable(cells, 0.0, {"gflops": ctx.base_flops / 1e9, "params": ctx.base_params,
                                  "latency": lat.latency_ms({}) if lat is not None else None})
    limits = resolve_limits(budgets, table)
    if any(table.lowest(cost) > bound for cost, bound in limits.items()):
        raise CubesearchError(unmet_message(table, limits))


def predicted_front(table: MapTable, budgets: Sequence[str], points: int = 41,
                    exact: Exact | None = None) -> list[Choice]:
    """The MILP's plans under `budgets`, swept along the first budget's cost up to its bound;
    `exact`: each plan's exact cost (`plans.exact_costs`), re-checked against the budgets."""
    limits = resolve_limits(budgets, table)
    first = next(iter(limits))
    front = sweep(table, first, limits[first], points=points, limits=limits, exact=exact)
    if not front:
        raise CubesearchError(unmet_message(table, limits))
    return front
