"""`cubesearch export STUDY`: the chosen models as safetensors + ONNX + model card, and the index."""

from __future__ import annotations

from typing import Any

import typer

from cubesearch.cli import options as o
from cubesearch.cli.app import app, out_console, print_json


def final_recipe_title(models: list[dict[str, Any]]) -> str:
    """`final recipe, 9 epochs`: the epochs the models were trained by the final recipe, as
    recorded (`--finetune`'s, or a halving search's top rung), not the `--finetune` option."""
    epochs = sorted({float(e) for m in models
                     if (e := m.get("finetune_epochs") or m.get("final_epochs")) is not None})
    return f"final recipe, {'/'.join(f'{e:g}' for e in epochs) or '?'} epochs"


@app.command()
def export(
    source: str = o.SOURCE,
    study: str = o.STUDY,
    out: str = typer.Option("exported", "--out", "-o", help="Folder for the models and the index."),
    select: str = typer.Option("pareto", help="pareto, best-iou, under:30GFLOPs or trial:N."),
    formats: str = typer.Option("safetensors,onnx", help="safetensors,onnx[,torchscript]."),
    finetune_epochs: float = typer.Option(0.0, "--finetune", "--finetune-epochs",
                                          help="Train each model by the final recipe for this many "
                                               "epochs before export, beside the paired baseline "
                                               "(see `cubesearch finetune`)."),
    from_scratch: bool = o.FROM_SCRATCH,
    trust_model_code: bool = o.TRUST_MODEL_CODE,
    fold: bool = typer.Option(True, "--fold/--no-fold",
                              help="Write ONNX/TorchScript from the folded eval form of every Cube "
                                   "block (the deploy form; --no-fold: the training form)."),
    opset: int = typer.Option(18, help="ONNX opset (18 … 23; 18 is what most runtimes read)."),
    as_json: bool = o.AS_JSON,
) -> None:
    """Export the Pareto-optimal (or selected) models of a search, with a Pareto plot."""
    from rich.table import Table

    from cubesearch.cli.finetune import results_table
    from cubesearch.exporting.export import calibration_line
    from cubesearch.exporting.export import export as run_export
    from cubesearch.training.finetune import Recipe

    console = out_console(as_json)
    result = run_export(source, study=study, out=out, select=select,
                        formats=tuple(f.strip() for f in formats.split(",") if f.strip()),
                        finetune_epochs=finetune_epochs, console=console,
                        trust_code=trust_model_code, fold=fold, opset=opset,
                        recipe=Recipe(from_scratch=True) if from_scratch else None)
    if as_json:
        print_json(result.to_dict())
        return
    table = Table(title=f"exported to {result.out}")
    for col in ("trial", "IoU", "GFLOPs", "params", "fold max |Δ|", "ONNX max |Δ|", "folder"):
        table.add_column(col, justify="right" if col != "folder" else "left")
    for m in result.models:
        errs = [m.get(k) for k in ("fold_max_abs_error", "onnx_max_abs_error")]
        table.add_row(str(m["trial"]), f"{m['iou']:.4f}", f"{m['gflops']:.3f}", f"{m['params']:,}",
                      *(f"{e:.1e}" if e is not None else "–" for e in errs), m["folder"])
    console.print(table)
    if any(m.get("final_iou") is not None for m in result.models):
        console.print(results_table(result.models, final_recipe_title(result.models)))
    if result.calibration:
        console.print(calibration_line(result.calibration))
    console.print(f"index: {result.index['md']}, plot: {result.index['png']} "
                  f"(interactive: {result.index['html']})")
