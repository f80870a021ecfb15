"""`cubesearch ablate MODEL`: the paper's ablation table for this model and data, predicted from
the site map (each config scored alone at each site; a row adds up its sites' ΔIoU)."""

from __future__ import annotations

from typing import Any

import typer

from cubesearch.cli import map as m
from cubesearch.cli import options as o
from cubesearch.cli.app import app, out_console, print_json

IOU_HELP = ("predicted IoU (site map, additive): the baseline's IoU plus, at each of the row's "
            "sites, the ΔIoU that config scored alone in the trained baseline after blockwise "
            "distillation")


@app.command(help="One row per knob change of the paper's block (router, attention, lattice "
             f"stride, depth…) for the fullcube plan and the decoder preset. Each row's IoU is the "
             f"{IOU_HELP} (OUT/map.json, the site map's one-knob cells, measured once and shared "
             "with `cubesearch map` and `search --strategy map` in the same --out). Rows are "
             "predictions, not trained models, unless --confirm trains them.")
def ablate(
    model: str = o.MODEL_SPEC,
    preset: str = typer.Option("all", help="Rows of the fullcube plan (every searchable site), of "
                               "the decoder preset, or all (both)."),
    knob: list[str] = typer.Option(None, "--knob", help="Ablate only this knob (repeatable): "
                                   "router, attention=off, depth=2… (default: every knob the "
                                   "space varies, with every value it allows)."),
    confirm: bool = typer.Option(False, "--confirm", help="Also train every row (and the "
                                 "unconverted model) from the trained baseline as a search trial: "
                                 "warm start, the blocks' distillation, then --epochs-per-trial "
                                 "of fine-tuning."),
    space: str = o.SPACE, data: str = o.DATA,
    epochs_per_trial: float = typer.Option(1.0, help="--confirm: fine-tuning epochs per row."),
    baseline_epochs: float = o.BASELINE_EPOCHS, distill_steps: int = o.SEARCH_DISTILL_STEPS,
    out: str = typer.Option("runs/search", "--out", "-o", help="The map's folder: its trained "
                            "baseline and map.json are reused, or made there."),
    seed: int = o.SEED, map_seed: int = m.MAP_SEED, model_arg: list[str] = o.MODEL_ARG,
    input_size: str = o.FLOPS_INPUT, tile_size: int = o.TILE_SIZE,
    train_tiles: int = o.TRAIN_TILES, val_tiles: int = o.VAL_TILES, batch_size: int = o.BATCH_SIZE,
    lr: float = o.LR, trial_lr: float = o.TRIAL_LR, classes: int = o.CLASSES,
    pretrained: bool = o.PRETRAINED, as_json: bool = o.AS_JSON,
) -> None:
    from cubesearch.core.helpers import parse_input_size
    from cubesearch.search.ablation import ablate as run_ablate

    console = out_console(as_json)
    result = run_ablate(
        model, preset=preset, knobs=knob or None, confirm=confirm, epochs_per_trial=epochs_per_trial,
        map_seed=map_seed, console=console, log=console.print,
        **o.given(space=space, data=data, baseline_epochs=baseline_epochs, distill_steps=distill_steps,
                  out=out, seed=seed, input_size=parse_input_size(input_size), tile_size=tile_size,
                  train_tiles=train_tiles, val_tiles=val_tiles, batch_size=batch_size, lr=lr,
                  trial_lr=trial_lr, num_classes=classes, pretrained=pretrained,
                  model_kwargs=o.model_args(model_arg)))
    if as_json:
        print_json(result.to_dict())
        return
    console.print(ablation_table(result))
    ref = result.reference
    confirmed = (f", confirmed IoU {ref['confirmed_iou']:.4f}"
                 if ref.get("confirmed_iou") is not None else "")
    console.print(f"unconverted model (the trained baseline): IoU {ref['iou']:.4f}, "
                  f"{ref['gflops']:.3f} GFLOPs, {ref['params']:,} params{confirmed}")
    for note in result.notes:
        console.print(note)
    console.print(f"IoU: {IOU_HELP} ({result.map}; {result.measured} cells measured now)")
    console.print(f"{len(result.rows)} rows in {result.seconds:.1f} s; tables: "
                  f"{', '.join(str(f) for f in result.files)}")


def ablation_table(result: Any) -> Any:
    """The rows as a rich table (ΔIoU against each preset's default row)."""
    from rich.table import Table

    from cubesearch.search.ablation import DEFAULT, IOU_LABEL

    table = Table(title=f"Ablation of {result.model}: default {result.default.short()}, "
                        f"{IOU_LABEL} (space {result.space!r})")
    for name in ("preset", "knob", "value"):
        table.add_column(name, no_wrap=True)
    for name in ("predicted IoU", "ΔIoU", "GFLOPs", "params", "sites"):
        table.add_column(name, justify="right", no_wrap=True)
    if result.confirmed:
        table.add_column("confirmed IoU", justify="right", no_wrap=True)
        table.add_column("confirmed Δ", justify="right", no_wrap=True)
    table.add_column("note")

    def num(v: float | None, fmt: str) -> str:
        return "—" if v is None else format(v, fmt)

    last = None
    for r in result.rows:
        if last is not None and r.preset != last:
            table.add_section()
        last = r.preset
        value = "on" if r.value is True else "off" if r.value is False else str(r.value)
        cells = [r.preset, r.knob, "" if r.knob == DEFAULT else value,
                 num(r.iou, ".4f"), num(r.delta_iou, "+.4f"), f"{r.gflops:.3f}", f"{r.params:,}",
                 str(len(r.plan))]
        if result.confirmed:
            cells += [num(r.confirmed_iou, ".4f"), num(r.confirmed_delta, "+.4f")]
        cells.append(r.note)
        table.add_row(*cells)
    return table
