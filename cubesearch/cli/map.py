"""`cubesearch map MODEL -o OUT`: where a Cube block pays, every site's options measured alone.

It takes `search`'s model, data, space, baseline and Ray options (the same definitions), so a
map and `search --strategy map` in one --out share the trained baseline and the cells.
"""

from __future__ import annotations

from typing import Any

import typer

from cubesearch.cli import options as o
from cubesearch.cli import search as s
from cubesearch.cli.app import app, out_console, print_json

# The map's own options
BUDGETS = typer.Option(None, "--budget", help="Show the plans the integer program picks under "
                       "this budget (repeatable; any mix: 60%, 12G, 25ms, params:80%), swept "
                       "along the first one's cost: the predicted front.",
                       rich_help_panel=o.BUDGET_PANEL)
SUBSET = typer.Option("auto", "--subset", help="Cube configs measured per site: all, one-knob (the "
                      "default config and each one-knob change, as `ablate`), or auto (all while a "
                      "site has at most 12).", rich_help_panel=o.STRATEGY_PANEL)
MAP_SEED = typer.Option(None, "--map-seed", help="Seed of the cells (the blocks' initial weights "
                        "and distillation batches; default: --seed, which also seeds the "
                        "baseline and the data).", rich_help_panel=o.DATA_PANEL)


@app.command(name="map")
def map_command(
    model: str = o.MODEL_SPEC, budget: list[str] = BUDGETS, subset: str = SUBSET, space: str = o.SPACE,
    input_size: str = o.FLOPS_INPUT, latency_table: str = s.LATENCY_TABLE,
    latency_backend: str = s.LATENCY_BACKEND, baseline_epochs: float = o.BASELINE_EPOCHS,
    distill_steps: int = o.SEARCH_DISTILL_STEPS, batch_size: int = o.BATCH_SIZE, lr: float = o.LR,
    data: str = o.DATA, tile_size: int = o.TILE_SIZE, train_tiles: int = o.TRAIN_TILES,
    val_tiles: int = o.VAL_TILES, seed: int = o.SEED, map_seed: int = MAP_SEED,
    model_arg: list[str] = o.MODEL_ARG, classes: int = o.CLASSES, pretrained: bool = o.PRETRAINED,
    out: str = s.OUT, backend: str = s.BACKEND, address: str = s.ADDRESS,
    max_concurrent: int = s.MAX_CONCURRENT, cpus_per_trial: float = s.CPUS_PER_TRIAL,
    gpus_per_trial: float = s.GPUS_PER_TRIAL, as_json: bool = o.AS_JSON,
) -> None:
    """Measure every searchable site × option alone in the trained baseline: OUT/map.json and
    OUT/map.png (the paper's "where do I insert the block?", for this model and data)."""
    from cubesearch.plan.sites import parse_input_size
    from cubesearch.search.sitemap import site_map

    console = out_console(as_json)
    result = site_map(
        model, budgets=budget or (), subset=subset, backend="ray" if address else backend,
        map_seed=map_seed, console=console,
        **o.given(space=space, input_size=parse_input_size(input_size), latency_table=latency_table,
                  latency_backend=latency_backend, baseline_epochs=baseline_epochs,
                  distill_steps=distill_steps, batch_size=batch_size, lr=lr, data=data,
                  tile_size=tile_size, train_tiles=train_tiles, val_tiles=val_tiles, seed=seed,
                  model_kwargs=o.model_args(model_arg), num_classes=classes, pretrained=pretrained,
                  out=out, address=address, max_concurrent=max_concurrent,
                  cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial))
    if as_json:
        print_json(result.to_dict())
        return
    console.print(site_table(result.data))
    if result.front:
        console.print(front_table(result))
    d = result.data
    console.print(f"{len(d['cells'])} cells ({result.measured} measured now) in {result.path}; "
                  f"heat map {result.png}; subset: {d['subset_rule']}")


def site_table(data: dict[str, Any]) -> Any:
    """One row per site (data-flow order): its best Cube cell and best width cell by ΔIoU."""
    from rich.table import Table

    table = Table(title=f"Where a block pays in {data['model']} (baseline IoU "
                        f"{data['baseline_iou']:.4f}; each option alone, fitted by distillation)")
    for name in ("site", "role", "channels", "at"):
        table.add_column(name, no_wrap=True)
    for name in ("best Cube", "ΔIoU", "ΔGFLOPs", "best width", "ΔIoU ", "ΔGFLOPs "):
        table.add_column(name, justify="right", no_wrap=True)
    for site in data["sites"]:
        cells = [c for c in data["cells"] if c["site"] == site["name"]]
        row = [site["name"], site["role"], f"{site['in_channels']}→{site['out_channels']}",
               site["resolution"]]
        for kind in ("cube", "width"):
            mine = [c for c in cells if c.get("kind") == kind]
            best = max(mine, key=lambda c: c["delta_iou"]) if mine else None
            row += ([best.get("change") or best["option"], f"{best['delta_iou']:+.4f}",
                     f"{best['delta_gflops']:+.3f}"] if best else ["—", "", ""])
        table.add_row(*row)
    return table


def front_table(result: Any) -> Any:
    """The integer program's plans under the budgets: predicted IoU and exact costs."""
    from rich.table import Table

    table = Table(title="Predicted front (baseline IoU + Σ ΔIoU of the chosen cells)")
    for name in ("predicted IoU", "GFLOPs", "params", "Cube sites", "narrowed"):
        table.add_column(name, justify="right", no_wrap=True)
    cells = {(c["site"], c["option"]): c for c in result.data["cells"]}
    for c in result.front:
        kinds = [cells[(site, opt)].get("kind") for site, opt in c.changed().items()]
        table.add_row(f"{c.predicted_iou:.4f}", f"{c.costs['gflops']:.3f}",
                      f"{int(c.costs.get('params', 0)):,}", str(kinds.count("cube")),
                      str(kinds.count("width")))
    return table
