"""`cubesearch search MODEL --budget 50GFLOPs`: the product's main job."""

from __future__ import annotations

import typer

from cubesearch.cli.app import app, out_console, print_json
from cubesearch.cli.options import (
    BATCH_SIZE,
    CLASSES,
    FLOPS_INPUT,
    LR,
    MODEL_ARG,
    PRETRAINED,
    RUNGS,
    TILE_SIZE,
    TRAIN_TILES,
    VAL_TILES,
    model_args,
    parse_rungs,
)
from cubesearch.errors import CubesearchError
from cubesearch.redact import mask_url


def parse_duration(text: str | None) -> float | None:
    """`90`, `90s`, `30m`, `2h` → seconds."""
    if text is None:
        return None
    t = text.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(t[-1:])
    try:
        value = float(t[:-1] if scale else t) * (scale or 1)
    except ValueError:
        raise CubesearchError(f"timeout {text!r} is not a duration (e.g. 90s, 30m, 2h)") from None
    if value <= 0:
        raise CubesearchError(f"timeout {text!r} must be positive")
    return value


@app.command()
def search(
    model: str = typer.Argument(..., help="Model spec: timm:NAME, smp:ARCH:ENCODER, model.py[:NAME]."),
    model_arg: list[str] = MODEL_ARG,
    budget: str = typer.Option(..., "--budget", help="FLOPs (50GFLOPs, 50G, 5e10, 400MFLOPs), latency "
                               "(25ms, 0.5s; with a latency objective) or 60% of the first cost "
                               "objective named."),
    space: str = typer.Option("default", help="Search space: default, shared, fullcube, paper, or a .yaml."),
    trials: int = typer.Option(20, min=1, help="Trained trials in the study (a resume counts earlier "
                                "ones; plans over budget are rejected free and not counted). "
                                "With --strategy oneshot: the plans confirmed by training; "
                                "with halving: the plans rung 0 trains."),
    strategy: str = typer.Option("auto", help="auto (the default): halving with cubesearch's trainer, "
                                 "trials with another --evaluator. halving: plans ranked on the "
                                 "first of --rungs (epochs of the final recipe), the best 1/--eta "
                                 "trained on to the next (MO-ASHA), so the front holds trained "
                                 "models and their paired baseline; trials: every plan sampled "
                                 "is trained --epochs-per-trial; oneshot: a supernet trained once "
                                 "scores --proxy-trials plans, --trials plans covering its front "
                                 "are confirmed by training."),
    rungs: str = RUNGS,
    eta: int = typer.Option(3, min=2, help="halving: 1/eta of each rung is promoted."),
    proxy_trials: int = typer.Option(500, help="oneshot: plans scored in the supernet (about a "
                                     "second each on a GPU, several on a CPU)."),
    supernet_epochs: float = typer.Option(3.0, help="oneshot, --evaluator supernet: the supernet's "
                                          "training epochs."),
    supernet_workers: int = typer.Option(1, help="oneshot with --backend ray: data-parallel "
                                         "supernet training on N Ray Train workers."),
    timeout: str = typer.Option(None, help="Stop after this long: 90s, 30m, 2h."),
    data: str = typer.Option("synthetic", help="synthetic, or a dataset folder."),
    epochs_per_trial: float = typer.Option(1.0, help="--strategy trials / oneshot: training epochs "
                                           "per trial (fractions allowed)."),
    baseline_epochs: float = typer.Option(None, help="Epochs for the baseline (default: the top rung's "
                                          "with halving, else --epochs-per-trial)."),
    distill_steps: int = typer.Option(100, min=0, help="Fit each Cube block to the conv it replaces for "
                                      "N batches before a trial trains (0: off)."),
    storage: str = typer.Option(None, help="Optuna storage URL (default: sqlite in --out)."),
    study: str = typer.Option(None, help="Study name (default: from model and space)."),
    out: str = typer.Option("runs/search", "--out", "-o", help="Folder for the study, checkpoints, plots."),
    seed: int = typer.Option(0),
    objectives: str = typer.Option("iou,gflops", help="iou and costs: iou,gflops, iou,gflops,params, "
                                   "iou,latency or iou,gflops,latency (latency: measured on this "
                                   "device, see `cubesearch profile`)."),
    latency_table: str = typer.Option(None, help="Latency table (default: OUT/latency.json; "
                                      "profiled here when it lacks the model)."),
    latency_backend: str = typer.Option("torch", help="Runtime the latency table is timed in: torch "
                                        "(eager, folded) or ort (ONNX Runtime CPU, the exported "
                                        "model); as `cubesearch profile --backend`."),
    reprofile: bool = typer.Option(False, "--reprofile", help="Measure this device's latency "
                                   "table again (needed to resume a study on another device)."),
    input_size: str = FLOPS_INPUT,
    tile_size: int = TILE_SIZE,
    train_tiles: int = TRAIN_TILES,
    val_tiles: int = VAL_TILES,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    trial_lr: float = typer.Option(None, help="Peak learning rate of the weights a trial takes from the "
                                   "trained baseline (default: --lr / 4)."),
    sampler: str = typer.Option("nsga2", help="nsga2, tpe or random."),
    evaluator: str = typer.Option("finetune", help="How a plan becomes an IoU: finetune (cubesearch's "
                                  "trainer), supernet (scored in about a second in a supernet "
                                  "trained once per search; recorded as scored, not trained) or "
                                  "path/to/eval.py:fn, your function "
                                  "fn(model, trial) -> {'iou': ...} given the converted, "
                                  "warm-started model."),
    classes: int = CLASSES,
    pretrained: bool = PRETRAINED,
    backend: str = typer.Option("local", help="local (Optuna in this process) or ray (Ray Tune)."),
    address: str = typer.Option(None, help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT "
                                "(default: start a local Ray instance). Implies --backend ray."),
    max_concurrent: int = typer.Option(None, min=1, help="Ray: trials at once (default: as many as "
                                       "the cluster's resources fit)."),
    cpus_per_trial: float = typer.Option(1.0, min=0.01, help="Ray: CPUs reserved per trial."),
    gpus_per_trial: float = typer.Option(0.0, min=0.0, help="Ray: GPUs per trial (fractions share one)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object at the end."),
) -> None:
    """Search which convs to replace, and how, for IoU against FLOPs under a budget."""
    # imported when the command runs (torch, optuna, rich…): `cubesearch --help` stays fast
    from cubesearch.search import BACKENDS, SAMPLERS, front_table, parse_objectives
    from cubesearch.search import search as run_search
    from cubesearch.search.settings import STRATEGIES
    from cubesearch.sites import parse_input_size

    if sampler not in SAMPLERS:
        raise CubesearchError(f"unknown sampler {sampler!r} (choose from {', '.join(SAMPLERS)})")
    if strategy not in ("auto", *STRATEGIES):
        raise CubesearchError(f"--strategy {strategy!r}: choose auto, {', '.join(STRATEGIES)}")
    if backend not in BACKENDS:
        raise CubesearchError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if address is not None:
        backend = "ray"
    console = out_console(as_json)
    result = run_search(
        model, budget, space=space, trials=trials, timeout=parse_duration(timeout), data=data,
        epochs_per_trial=epochs_per_trial, baseline_epochs=baseline_epochs,
        distill_steps=distill_steps, storage=storage,
        study=study, out=out, seed=seed, objectives=parse_objectives(objectives),
        input_size=parse_input_size(input_size), tile_size=tile_size, train_tiles=train_tiles,
        val_tiles=val_tiles, batch_size=batch_size, lr=lr, trial_lr=trial_lr, sampler=sampler,
        strategy=strategy, rungs=parse_rungs(rungs), eta=eta, proxy_trials=proxy_trials,
        supernet_epochs=supernet_epochs,
        supernet_workers=supernet_workers,
        evaluator=evaluator, num_classes=classes,
        pretrained=pretrained, backend=backend, address=address, max_concurrent=max_concurrent,
        cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, console=console,
        latency_table=latency_table, latency_backend=latency_backend, reprofile=reprofile,
        model_kwargs=model_args(model_arg))
    if as_json:
        print_json(result.to_dict())
        return
    console.print(front_table(result, f"Pareto front of {result.study_name} "
                                      f"(budget {result.budget_label()})"))
    halving = any("rung_epochs" in p.extra for p in result.scored)  # its lower rungs: the cloud
    cloud = "ranked on the first rung" if halving else "scored in the supernet"
    scored = f"{result.n_scored} plans {cloud}, " if result.n_scored else ""
    trained = "trained on to the top rung" if halving else "trials trained"
    console.print(f"{scored}{result.n_complete} {trained}, {result.n_rejected} plans rejected over "
                  f"budget (not trained), {result.n_failed} failed; study: "
                  f"{mask_url(result.storage)}; plot: {result.out / 'pareto.png'}")
