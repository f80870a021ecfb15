"""`cubesearch search MODEL --budget 50GFLOPs`: the product's main job.

Its options are grouped in `--help` panels (cubesearch.cli.options); those only some strategies
read default to None, so the settings can tell a given option from an unset one.
"""

from __future__ import annotations

from typing import Any

from cubesearch.cli import options as o
from cubesearch.cli.app import app, out_console, print_json
from cubesearch.core.errors import CubesearchError
from cubesearch.core.redact import mask_url
from cubesearch.cost.budget import budget_objective

# The search's own options (those other commands share are in cubesearch.cli.options)
BUDGET = o.option(..., "--budget", o.BUDGET_PANEL, "FLOPs (50GFLOPs, 50G, 5e10, 400MFLOPs), latency (25ms, "
                  "0.5s; with a latency objective) or 60% of the first cost objective named.")
OBJECTIVES = o.option("iou,gflops", "--objectives", o.BUDGET_PANEL, "iou and costs: iou,gflops, "
                      "iou,gflops,params, iou,latency or iou,gflops,latency (latency: measured on this "
                      "device, see `cubesearch profile`).")
LATENCY_TABLE = o.option(None, "--latency-table", o.BUDGET_PANEL, "Latency table (default: "
                         "OUT/latency.json; profiled here when it lacks the model).")
LATENCY_BACKEND = o.option("torch", "--latency-backend", o.BUDGET_PANEL, "Runtime the latency table is "
                           "timed in: torch (eager, folded) or ort (ONNX Runtime CPU, the exported model); "
                           "as `cubesearch profile --backend`.")
REPROFILE = o.option(False, "--reprofile", o.BUDGET_PANEL, "Measure this device's latency table again "
                     "(needed to resume a study on another device).")
TRIALS = o.option(20, "--trials", o.STRATEGY_PANEL, "Plans the study trains, counting its two references "
                  "(the unconverted model and FullCube), so --trials N trains N - 2 searched plans; with "
                  "halving: the plans rung 0 trains; with map: the finalists trained. A "
                  "resume counts earlier ones; plans over budget are rejected free and not counted.", min=1)
STRATEGY = o.option("auto", "--strategy", o.STRATEGY_PANEL, "auto (the default): trials if "
                    "--epochs-per-trial is given, halving if --rungs or --eta is, else halving with "
                    "cubesearch's trainer and trials with another --evaluator. halving: plans ranked on the "
                    "first of --rungs (epochs of the final recipe), the best 1/--eta trained on to the next "
                    "(MO-ASHA), so the front holds trained models and their paired baseline; trials: every "
                    "plan sampled is trained --epochs-per-trial; map: each site's options scored alone in "
                    "the baseline (the site map), --trials finalists chosen by integer programming and "
                    "trained to the top rung. An option the strategy does not use is an error.")
ETA = o.option(None, "--eta", o.STRATEGY_PANEL, "halving: 1/eta of each rung is promoted (default 3).", min=2)
SAMPLER = o.option("nsga2", "--sampler", o.STRATEGY_PANEL, "nsga2, tpe or random.")
EVALUATOR = o.option("finetune", "--evaluator", o.STRATEGY_PANEL, "How a plan becomes an IoU: finetune "
                     "(cubesearch's trainer) or path/to/eval.py:fn, your function "
                     "fn(model, trial) -> {'iou': ...} given the converted, warm-started model.")
TIMEOUT = o.option(None, "--timeout", o.STRATEGY_PANEL, "Bound on the whole search (90s, 30m, 2h), from its "
                   "start: the baseline or a plan still training then stops, and no plan starts after it (a "
                   "plan so stopped is recorded as failed and trained again on resume; a baseline so "
                   "stopped ends the search with an error).")
STORAGE = o.option(None, "--storage", o.STORAGE_PANEL, "Optuna storage URL (default: sqlite in --out).")
STUDY_NAME = o.option(None, "--study", o.STORAGE_PANEL, "Study name (default: from model and space).")
OUT = o.option("runs/search", "--out", "-o", o.STORAGE_PANEL, "Folder for the study, checkpoints, plots.")
BACKEND = o.option("local", "--backend", o.RAY_PANEL, "local (Optuna in this process) or ray (Ray Tune).")
ADDRESS = o.option(None, "--address", o.RAY_PANEL, "Ray cluster: auto, HOST:PORT or ray://HOST:PORT "
                   "(default: start a local Ray instance). Implies --backend ray.")
MAX_CONCURRENT = o.option(None, "--max-concurrent", o.RAY_PANEL, "Ray: trials at once (default: as many as "
                          "the cluster's resources fit).", min=1)
CPUS_PER_TRIAL = o.option(1.0, "--cpus-per-trial", o.RAY_PANEL, "Ray: CPUs reserved per trial.", min=0.01)
GPUS_PER_TRIAL = o.option(0.0, "--gpus-per-trial", o.RAY_PANEL, "Ray: GPUs per trial (fractions "
                          "share one).", min=0.0)


def parse_duration(text: str | None) -> float | None:
    """`90`, `90s`, `30m`, `2h` → seconds."""
    if text is None:
        return None
    t = text.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(t[-1:])
    try:
        value = float(t[:-1] if scale else t) * (scale or 1)
    except ValueError:
        raise CubesearchError(f"--timeout {text!r} is not a duration (e.g. 90s, 30m, 2h)") from None
    if value <= 0:
        raise CubesearchError(f"--timeout {text!r} must be positive")
    return value


@app.command()
def search(
    model: str = o.MODEL_SPEC, budget: str = BUDGET, objectives: str = OBJECTIVES,
    input_size: str = o.FLOPS_INPUT, latency_table: str = LATENCY_TABLE,
    latency_backend: str = LATENCY_BACKEND, reprofile: bool = REPROFILE,
    strategy: str = STRATEGY, trials: int = TRIALS, space: str = o.SPACE, rungs: str = o.RUNGS,
    eta: int = ETA, epochs_per_trial: float = o.EPOCHS_PER_TRIAL,
    sampler: str = SAMPLER, evaluator: str = EVALUATOR,
    timeout: str = TIMEOUT,
    baseline_epochs: float = o.BASELINE_EPOCHS, distill_steps: int = o.SEARCH_DISTILL_STEPS,
    batch_size: int = o.BATCH_SIZE, lr: float = o.LR, trial_lr: float = o.TRIAL_LR,
    data: str = o.DATA, tile_size: int = o.TILE_SIZE, train_tiles: int = o.TRAIN_TILES,
    val_tiles: int = o.VAL_TILES, seed: int = o.SEED,
    model_arg: list[str] = o.MODEL_ARG, classes: int = o.CLASSES, pretrained: bool = o.PRETRAINED,
    storage: str = STORAGE, study: str = STUDY_NAME, out: str = OUT,
    backend: str = BACKEND, address: str = ADDRESS, max_concurrent: int = MAX_CONCURRENT,
    cpus_per_trial: float = CPUS_PER_TRIAL, gpus_per_trial: float = GPUS_PER_TRIAL,
    as_json: bool = o.AS_JSON,
) -> None:
    """Search which convs to replace, and how, for IoU against FLOPs under a budget."""
    budget_objective(budget, objectives.split(","))  # a typo: one line before torch even loads
    options = search_options(**{k: v for k, v in locals().items() if k not in ("model", "budget")})
    # imported when the command runs (torch, optuna…): `cubesearch --help` stays fast
    from cubesearch.search import search as run_search

    console = out_console(as_json)
    result = run_search(model, budget, console=console, **options)
    if as_json:
        print_json(result.to_dict())
        return
    print_summary(result, console)


def search_options(**cli: Any) -> dict[str, Any]:
    """The command's options as `SearchSettings` fields: parsed, renamed, the unset ones (None)
    left out so the settings' defaults and strategy checks apply (before the model loads)."""
    from cubesearch.plan.sites import parse_input_size
    from cubesearch.search import BACKENDS, SAMPLERS, parse_objectives

    if cli["sampler"] not in SAMPLERS:
        raise CubesearchError(f"--sampler {cli['sampler']!r}: choose from {', '.join(SAMPLERS)}")
    if cli["backend"] not in BACKENDS:
        raise CubesearchError(f"--backend {cli['backend']!r}: choose from {', '.join(BACKENDS)}")
    renamed = {"num_classes": cli.pop("classes"), "model_kwargs": o.model_args(cli.pop("model_arg"))}
    cli.pop("as_json")
    return o.given(**{
        **cli, **renamed, "timeout": parse_duration(cli["timeout"]), "rungs": o.parse_rungs(cli["rungs"]),
        "objectives": parse_objectives(cli["objectives"]), "input_size": parse_input_size(cli["input_size"]),
        "backend": "ray" if cli["address"] is not None else cli["backend"]})


def print_summary(result: Any, console: Any) -> None:
    """The front's table and the counts: what was scored, trained, rejected, failed; where."""
    from cubesearch.search import front_table

    console.print(front_table(result, f"Pareto front of {result.study_name} "
                                      f"(budget {result.budget_label()})"))
    halving = any("rung_epochs" in p.extra for p in result.scored)  # its lower rungs: the cloud
    scored = f"{result.n_scored} plans ranked on the first rung, " if result.n_scored else ""
    trained = "trained on to the top rung" if halving else "trials trained"
    console.print(f"{scored}{result.n_complete} {trained}, {result.n_rejected} plans rejected over "
                  f"budget (not trained), {result.n_failed} failed; study: "
                  f"{mask_url(result.storage)}; plot: {result.out / 'pareto.png'}")
