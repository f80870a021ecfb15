"""`cubesearch finetune CHECKPOINT|STUDY`: train plans by the final recipe, beside their paired
baseline (a thin layer over `cubesearch.exporting.finetuning`)."""

from __future__ import annotations

from typing import Any

import typer

from cubesearch.cli import options as o
from cubesearch.cli.app import app, out_console, print_json


def recipe_from(epochs: float, lr: float | None, block_lr: float | None, kd_weight: float | None,
                patience: int | None, distill_steps: int | None, from_scratch: bool = False) -> Any:
    """A `Recipe` of the options given (the rest its defaults); a bad value is one error line."""
    from pydantic import ValidationError

    from cubesearch.core.errors import ConfigError, validation_message
    from cubesearch.training.finetune import Recipe

    given = dict(epochs=epochs, lr=lr, block_lr=block_lr, kd_weight=kd_weight,
                 distill_steps=distill_steps, from_scratch=from_scratch or None)
    if patience is not None:
        given["patience"] = patience or None  # 0: no early stopping
    try:
        return Recipe(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, Recipe.model_fields)) from None


def results_table(models: list[dict[str, Any]], title: str) -> Any:
    """Proxy IoU → final IoU, the paired baseline's, ΔIoU and GFLOPs of each model."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("model", "proxy IoU", "final IoU", "paired baseline IoU", "ΔIoU", "GFLOPs", "best epoch"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=col == "model")
    fmt = lambda v, f="{:.4f}": "–" if v is None else f.format(v)  # noqa: E731
    for m in models:
        table.add_row(str(m.get("name", m.get("trial"))), fmt(m.get("proxy_iou")), fmt(m.get("final_iou")),
                      fmt(m.get("paired_baseline_iou")), fmt(m.get("delta_iou_vs_paired"), "{:+.4f}"),
                      fmt(m.get("gflops"), "{:.3f}"), fmt(m.get("best_epoch"), "{:g}"))
    return table


@app.command()
def finetune(
    target: str = typer.Argument(..., help="A trial or exported model folder (plan.json), or a "
                                           "search's --out folder / Optuna storage URL."),
    epochs: float = o.RECIPE_EPOCHS,
    out: str = typer.Option("finetuned", "--out", "-o",
                            help="Folder for the trained model(s) (OUT/<name>/) and the paired "
                                 "baseline's figures (OUT/paired.json)."),
    baseline: str = typer.Option(None, help="The trained, unconverted model to start from (default: "
                                            "the checkpoint's recorded one, or the study's)."),
    study: str = o.STUDY,
    select: str = typer.Option("pareto", help="Models of a study: pareto, best-iou, under:30GFLOPs "
                                              "or trial:N."),
    data: str = typer.Option(None, help="synthetic or a dataset folder (default: what the checkpoint "
                                        "or study trained on)."),
    input_size: str = typer.Option(None, help="Training tiles, CxHxW (default: the recorded ones)."),
    train_tiles: int = typer.Option(None, help="Synthetic training tiles (default: the recorded)."),
    val_tiles: int = typer.Option(None, help="Synthetic validation tiles (default: the recorded)."),
    batch_size: int = typer.Option(None, help="Batch size (default: the recorded)."),
    seed: int = typer.Option(None, help="Seed (default: the baseline's, so the search's tiles)."),
    val_split: float = o.VAL_SPLIT, crops_per_image: int = o.CROPS_PER_IMAGE, workers: int = o.WORKERS,
    lr: float = o.RECIPE_LR, block_lr: float = o.BLOCK_LR, kd_weight: float = o.KD_WEIGHT,
    patience: int = o.PATIENCE, distill_steps: int = o.DISTILL_STEPS, from_scratch: bool = o.FROM_SCRATCH,
    device: str = o.DEVICE,
    trust_model_code: bool = o.TRUST_MODEL_CODE, as_json: bool = o.AS_JSON,
) -> None:
    """Train a checkpoint's plan, or a study's chosen plans, by the final recipe (warm start from
    the baseline, annealed to 0, best weights kept, early stopping; distillation from the
    baseline only with --kd-weight), and the unconverted baseline by the same recipe (the paired
    baseline): proxy IoU → final IoU.

    Every figure is on the search's own validation set unless --data and friends say otherwise."""
    from cubesearch.exporting.finetuning import jobs_for, run_jobs
    from cubesearch.models.trust import trust_model_code as trust_model_code_for
    from cubesearch.plan.sites import parse_input_size

    recipe = recipe_from(epochs, lr, block_lr, kd_weight, patience, distill_steps, from_scratch)
    options = dict(data=data, train_tiles=train_tiles, val_tiles=val_tiles, batch_size=batch_size,
                   seed=seed, device=device, val_split=val_split, crops_per_image=crops_per_image,
                   workers=workers,
                   input_size=parse_input_size(input_size) if input_size else None)
    console = out_console(as_json)
    with trust_model_code_for(trust_model_code):
        jobs = jobs_for(target, study=study, select=select, baseline=baseline,
                        **{k: v for k, v in options.items() if v is not None})
        result = run_jobs(jobs, out, recipe=recipe, progress=not as_json, log=console.print)
    if as_json:
        print_json(result.to_dict())
        return
    console.print(results_table(result.models, f"final recipe, {recipe.epochs:g} epochs → {result.out}"))
    if result.paired:
        console.print(f"paired baseline: the unconverted model by the same recipe, epochs and seed: "
                      f"IoU {result.paired['iou']:.4f} ({result.out / 'paired.json'})")
