"""`cubesearch export STUDY`: the chosen models as safetensors + ONNX + model card, and the index."""

from __future__ import annotations

import typer

from cubesearch.cli.app import app, out_console, print_json
from cubesearch.cli.options import FROM_SCRATCH, TRUST_MODEL_CODE


@app.command()
def export(
    source: str = typer.Argument(..., help="A search's --out folder, or an Optuna storage URL."),
    study: str = typer.Option(None, help="Study name (needed when the storage holds several)."),
    out: str = typer.Option("exported", "--out", "-o", help="Folder for the models and the index."),
    select: str = typer.Option("pareto", help="pareto, best-iou, under:30GFLOPs or trial:N."),
    formats: str = typer.Option("safetensors,onnx", help="safetensors,onnx[,torchscript]."),
    finetune_epochs: float = typer.Option(0.0, "--finetune", "--finetune-epochs",
                                          help="Train each model by the final recipe for this many "
                                               "epochs before export, beside the paired baseline "
                                               "(see `cubesearch finetune`)."),
    from_scratch: bool = FROM_SCRATCH,
    trust_model_code: bool = TRUST_MODEL_CODE,
    fold: bool = typer.Option(True, "--fold/--no-fold",
                              help="Write ONNX/TorchScript from the folded eval form of every Cube "
                                   "block (the deploy form; --no-fold: the training form)."),
    opset: int = typer.Option(18, help="ONNX opset (18 … 23; 18 is what most runtimes read)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Export the Pareto-optimal (or selected) models of a search, with a Pareto plot."""
    from rich.table import Table

    from cubesearch.cli.finetune import results_table
    from cubesearch.exporting import calibration_line
    from cubesearch.exporting import export as run_export
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
        console.print(results_table(result.models, f"final recipe, {finetune_epochs:g} epochs"))
    if result.calibration:
        console.print(calibration_line(result.calibration))
    console.print(f"index: {result.index['md']}, plot: {result.index['png']} "
                  f"(interactive: {result.index['html']})")
