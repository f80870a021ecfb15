"""`cubesearch calibrate STUDY`: how well the search's proxy ranks trained models (a thin layer
over `cubesearch.exporting.calibration`)."""

from __future__ import annotations

import typer

from cubesearch.cli import options as o
from cubesearch.cli.app import app, out_console, print_json
from cubesearch.cli.finetune import recipe_from


@app.command()
def calibrate(
    source: str = o.SOURCE,
    plans: int = typer.Option(8, "--plans", help="How many of the study's trained plans to train "
                                                 "(spread over the front's cost range)."),
    epochs: float = o.RECIPE_EPOCHS,
    seeds: int = typer.Option(2, "--seeds", help="Seeds per plan (≥ 2: their τ is the ceiling)."),
    study: str = o.STUDY,
    out: str = typer.Option(None, "--out", "-o", help="Where OUT/calibration/ keeps the runs "
                                                      "(default: the study's folder)."),
    lr: float = o.RECIPE_LR, block_lr: float = o.BLOCK_LR, kd_weight: float = o.KD_WEIGHT,
    patience: int = o.PATIENCE, distill_steps: int = o.DISTILL_STEPS, device: str = o.DEVICE,
    backend: str = typer.Option(None, help="local (this process) or ray (each run a Ray task, with "
                                "the study's --cpus-per-trial / --gpus-per-trial); default: the "
                                "study's backend.", rich_help_panel=o.RAY_PANEL),
    address: str = o.ADDRESS, trust_model_code: bool = o.TRUST_MODEL_CODE, as_json: bool = o.AS_JSON,
) -> None:
    """Train K of a study's plans by the final recipe under several seeds and report how well the
    search's IoU (the proxy) ranks them: Kendall τ and Spearman ρ against the mean final IoU,
    beside the seed-to-seed τ. Recorded in the study and its search.json; `export` shows it.

    Resumable: each (plan, seed) is kept in OUT/calibration/ once trained; a re-run trains only
    what is missing. A study searched on Ray is calibrated on Ray (--backend says otherwise); a
    halving study's proxy is its first rung."""
    from rich.table import Table

    from cubesearch.exporting.calibration import calibrate as run_calibration
    from cubesearch.exporting.export import calibration_line
    from cubesearch.models.trust import trust_model_code as trust_model_code_for

    recipe = recipe_from(epochs, lr, block_lr, kd_weight, patience, distill_steps)
    console = out_console(as_json)
    with trust_model_code_for(trust_model_code):
        result = run_calibration(source, study=study, plans=plans, seeds=seeds, recipe=recipe, out=out,
                                 progress=not as_json, log=console.print, backend=backend,
                                 address=address,
                                 **({"device": device} if device else {}))
    if as_json:
        print_json(result.to_dict())
        return
    fig = result.figures
    table = Table(title=f"calibration: {fig['n_plans']} plans × {fig['n_seeds']} seeds, "
                        f"{fig['epochs']:g} epochs of the final recipe")
    for col in ("trial", "GFLOPs", "proxy", "final IoU (mean)", "per seed"):
        table.add_column(col, justify="right")
    for row in fig["plans"]:
        table.add_row(f"{row['trial']}{' (' + row['label'] + ')' if row['label'] else ''}",
                      f"{row['gflops']:.3f}", f"{row['proxy_iou']:.4f}", f"{row['final_iou']:.4f}",
                      " ".join(f"{v:.4f}" for v in row["final_ious"]))
    console.print(table)
    console.print(f"proxy: {fig['proxy']}")
    console.print(calibration_line(fig))
    console.print(f"{result.trained} runs trained now, {result.reused} reused from {result.folder}")
