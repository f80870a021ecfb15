"""`train`: resolve the model → build the data → warm start and distil → fit → report."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import model_device, resolve_device
from cubesearch.core.logging import get_logger, progress_enabled
from cubesearch.plan.checkpoint import check_destination, save
from cubesearch.plan.plan import Plan
from cubesearch.training.callbacks import BestWeights, Evaluation, History, ProgressBar, eval_points
from cubesearch.training.config import DEFAULT_EPOCHS, TrainConfig
from cubesearch.training.data import make_datasets
from cubesearch.training.distillation import distill
from cubesearch.training.inputs import Inputs
from cubesearch.training.loop import FitState, fit
from cubesearch.training.losses import make_loss
from cubesearch.training.optim import create_optimizer, create_scheduler, param_groups
from cubesearch.training.resolve import resolve_model
from cubesearch.training.warmstart import load_init, teacher_for, warm_source

logger = get_logger(__name__)


@dataclass
class TrainResult:
    """What `train` returns: the trained model (eval mode, on the device it came from), the final
    validation metrics, one history row per evaluation, and where the checkpoint went."""

    model: nn.Module
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None
    plan: Plan | None = None
    init: dict[str, Any] | None = None
    distill: dict[str, Any] | None = None


@dataclass
class _Run:
    """One call of `train`: its settings and what the steps hand on to each other."""

    cfg: TrainConfig
    device: torch.device
    log: Callable[[str], None]
    started: float = field(default_factory=time.perf_counter)
    amp: bool = False
    channels_last: bool = True
    num_classes: int = 1
    datasets: tuple[Any, Any] = (None, None)
    data_seconds: float = 0.0
    init: dict[str, Any] | None = None
    distill: dict[str, Any] | None = None
    teacher: nn.Module | None = None
    plan: Plan | None = None


@contextlib.contextmanager
def _seeded(cfg: TrainConfig, dev: torch.device) -> Iterator[None]:
    """Model init, data order and augmentations from `cfg.seed`; the caller's RNG untouched."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic
        try:
            yield
        finally:
            if cfg.deterministic and not was_deterministic:
                torch.use_deterministic_algorithms(False)


def _describe(ds: Any) -> str:
    return ds.describe() if hasattr(ds, "describe") else f"{type(ds).__name__} ({len(ds)} samples)"


def _data(run: _Run, data: Any) -> None:
    """The (train, val) datasets, checked against the task's classes and channels."""
    cfg, k = run.cfg, run.num_classes
    t0 = time.perf_counter()
    run.datasets = make_datasets(data, cfg.input_size[1], train_tiles=cfg.train_tiles,
                                 val_tiles=cfg.val_tiles, seed=cfg.seed, num_classes=k,
                                 in_channels=cfg.input_size[0], val_split=cfg.val_split,
                                 crops_per_image=cfg.crops_per_image)
    run.data_seconds = time.perf_counter() - t0
    for ds, role in zip(run.datasets, ("training", "validation"), strict=True):
        if getattr(ds, "num_classes", k) != k:
            raise CubesearchError(f"the {role} set has {ds.num_classes} classes but the task has {k}")
        if getattr(ds, "in_channels", cfg.input_size[0]) != cfg.input_size[0]:
            raise CubesearchError(f"the {role} set has {ds.in_channels} channels, the input "
                                  f"size says {cfg.input_size[0]}")
        if len(ds) == 0:
            raise CubesearchError(f"the {role} set is empty")
    run.log(f"data: {_describe(run.datasets[0])}; {_describe(run.datasets[1])}")


def _task_classes(cfg: TrainConfig, plan_classes: int | None, data: Any) -> int:
    if cfg.num_classes is not None and plan_classes is not None and cfg.num_classes != plan_classes:
        raise CubesearchError(f"--classes {cfg.num_classes} but the model was built for {plan_classes}")
    first = data[0] if isinstance(data, (tuple, list)) else data
    return int(cfg.num_classes or plan_classes or getattr(first, "num_classes", 1) or 1)


def _batches(run: _Run, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches epoch after epoch, in an order fixed by the seed."""
    from torch.utils.data import DataLoader  # imported on use: keeps `import cubesearch` light

    train_ds = run.datasets[0]
    gen = torch.Generator().manual_seed(run.cfg.seed)
    epoch = 0
    while True:
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        yield from DataLoader(train_ds, batch_size=batch_size, shuffle=True, drop_last=True,
                              generator=gen, num_workers=run.cfg.workers,
                              pin_memory=run.device.type == "cuda")
        epoch += 1


def _warm_start(run: _Run, model: nn.Module, plan: Plan | None, source: Any, inputs: Inputs,
                stream: Iterator, teacher: Any = None) -> None:
    """Load what matches from `source`, then fit the new blocks to the baseline's convs (for a
    plan with widths, both from the baseline narrowed by the plan: `warm_source`)."""
    source = warm_source(source, plan)
    if source is not None:
        run.init = r = load_init(model, source)
        run.log(f"warm start from {r['source']}: loaded {r['loaded']} of {r['total']} tensors "
                f"({r['missing']} new or replaced, {r['shape_mismatch']} with other shapes)")
    model.to(run.device)
    if run.channels_last:
        model.to(memory_format=torch.channels_last)
    if not (run.cfg.distill_steps or run.cfg.kd_weight):
        return
    teacher = (teacher_for(source, plan) if teacher is None else teacher_for(teacher, None)
               ).to(run.device).eval()
    if run.channels_last:
        teacher.to(memory_format=torch.channels_last)
    if run.cfg.kd_weight:
        run.teacher = teacher
    if not run.cfg.distill_steps:
        return
    run.distill = distill(model, teacher, list(getattr(plan, "sites", {}) or {}),
                          lambda: inputs(*next(stream))[0], run.cfg.distill_steps,
                          insertions=list(getattr(plan, "insertions", {}) or {}),
                          lr=run.cfg.distill_lr, device=run.device, amp=run.amp, log=run.log)


def _block_split(model: nn.Module, plan: Plan | None) -> dict[str, Any] | None:
    """Without a warm start, a converted model's own blocks still get `new_lr`: every parameter
    outside the plan's sites and insertions counts as loaded."""
    places = [*getattr(plan, "sites", {}), *getattr(plan, "insertions", {})]
    if not places:
        return None
    inside = tuple(f"{p}." for p in places)
    return {"loaded_names": [n for n, _ in model.named_parameters() if not n.startswith(inside)]}


def _fit(run: _Run, model: nn.Module, inputs: Inputs, stream: Iterator, batch_size: int,
         console: Any, show: bool, callbacks: Sequence[Any]) -> FitState:
    cfg = run.cfg
    per_epoch = max(1, len(run.datasets[0]) // batch_size)
    total = cfg.steps or max(1, math.ceil((cfg.epochs or DEFAULT_EPOCHS) * per_epoch))
    opt = create_optimizer(cfg.optimizer, param_groups(model, cfg.lr, cfg.new_lr, run.init or
                                                       _block_split(model, run.plan)),
                           lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=run.amp and not torch.cuda.is_bf16_supported()) \
        if run.device.type == "cuda" else None
    evaluation = Evaluation(run.datasets[1], eval_points(total, per_epoch, cfg.eval_every,
                                                         by_epoch=cfg.steps is None),
                            batch_size=batch_size, loss=cfg.loss, workers=cfg.workers)
    extra = [BestWeights(cfg.patience)] if cfg.keep_best or cfg.patience else []
    start = round(cfg.schedule_start * per_epoch)
    span = max(total + start, round((cfg.schedule_epochs or 0) * per_epoch))
    state = FitState(
        model=model, optimizer=opt, loss_fn=make_loss(cfg.loss, run.num_classes), inputs=inputs,
        scheduler=create_scheduler(cfg.scheduler, opt, total_steps=span, warmup=cfg.warmup,
                                   min_lr_ratio=cfg.min_lr_ratio, start_step=start),
        batches=stream, num_classes=run.num_classes, total_steps=total, steps_per_epoch=per_epoch,
        lr=cfg.lr, amp=run.amp, grad_clip=cfg.grad_clip, scaler=scaler, started=run.started,
        teacher=run.teacher, kd_weight=cfg.kd_weight, kd_temperature=cfg.kd_temperature,
        callbacks=[ProgressBar(console, show, run.log), evaluation, History(), *extra, *callbacks])
    return fit(state)


def _report(run: _Run, state: FitState, data: Any, batch_size: int) -> dict[str, Any]:
    """The last evaluation's metrics plus the run's facts."""
    cfg, (train_ds, val_ds) = run.cfg, run.datasets
    last = state.history[-1] if state.history else {}
    groups = state.optimizer.param_groups
    final = dict(state.val_metrics)
    final.update({
        "train_loss": last.get("train_loss"), "train_iou": last.get("train_iou"),
        "steps": state.step, "epochs": round(state.step / state.steps_per_epoch, 4),
        "batch_size": batch_size, "lr": cfg.lr, "new_lr": cfg.new_lr if len(groups) > 1 else None,
        "optimizer": cfg.optimizer, "scheduler": cfg.scheduler, "loss_fn": cfg.loss, "seed": cfg.seed,
        "num_classes": run.num_classes, "input_size": list(cfg.input_size), "device": str(run.device),
        "amp": run.amp, "channels_last": run.channels_last, "train_tiles": len(train_ds),
        "val_tiles": len(val_ds),
        "data": getattr(data[0], "name", "datasets") if isinstance(data, (tuple, list)) else str(data),
        "seconds": round(time.perf_counter() - run.started, 3),
        "data_seconds": round(run.data_seconds, 3), "train_seconds": round(state.train_seconds, 3),
        "images_per_second": round(state.images / state.train_seconds, 3) if state.train_seconds else None,
        "input_mean": state.inputs.mean_list, "input_std": state.inputs.std_list,
    })
    if run.init:
        final.update(init_loaded=run.init["loaded"], init_total=run.init["total"],
                     init_source=run.init["source"])
    if run.distill:
        final.update(distill_steps=run.distill["steps"], distill_loss_start=run.distill["loss_start"],
                     distill_loss_end=run.distill["loss_end"])
    if state.best_step is not None:
        final.update(best_epoch=round(state.best_step / state.steps_per_epoch, 4),
                     stopped_early=state.step < state.total_steps,
                     scheduled_epochs=round(state.total_steps / state.steps_per_epoch, 4))
    if run.cfg.kd_weight:
        final.update(kd_weight=run.cfg.kd_weight, kd_temperature=run.cfg.kd_temperature)
    if run.device.type == "cuda":
        final["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(run.device) / 2**20, 1)
    return final


def _log_for(console: Any, show: bool, log: Callable[[str], None] | None) -> Callable[[str], None]:
    if log is not None:
        return log
    if not show:
        return logger.debug
    return console.print if console is not None else logger.info


def train(model_or_spec: Any, *, config: TrainConfig | None = None,
          plan: Plan | dict | str | Path | None = None, data: Any = "synthetic",
          init_from: Any = None, teacher: Any = None, out: str | Path | None = None,
          console: Any = None, log: Callable[[str], None] | None = None,
          callbacks: Sequence[Any] = (), **options: Any) -> TrainResult:
    """Train `model_or_spec` and evaluate it on the validation set; see the package docstring.

    `options` are `TrainConfig`'s fields (on top of `config`). `teacher` (a module or a
    checkpoint folder) is what `kd_weight` distils from when it is not the warm start's model.
    `callbacks` get the loop's events (`cubesearch.training.callbacks.Callback`). Returns a
    `TrainResult` whose `metrics` are the last evaluation's (`oa`, `precision`, `recall`, `f1`,
    `iou`, `loss`, …; with `keep_best`, the best one's) plus the run's facts (`train_loss`,
    `steps`, `epochs`, `seconds`, `images_per_second`, …). Raises
    `CubesearchError` for bad inputs and `TrainingDiverged` for a NaN/inf loss.
    """
    from rich.console import Console  # the progress bar's console, made only for a run

    cfg = TrainConfig.build(config, **options)
    if out is not None:
        check_destination(out, option="--out")  # before any work, not after the whole run
    show = progress_enabled(cfg.progress)
    run = _Run(cfg, resolve_device(cfg.device), _log_for(console, show, log))
    console = console or Console(stderr=True)
    run.amp = run.device.type == "cuda" and (cfg.amp is None or cfg.amp)
    run.channels_last = cfg.channels_last is None or cfg.channels_last
    with _seeded(cfg, run.device):
        model, plan, default_init, plan_classes = resolve_model(
            model_or_spec, plan, num_classes=cfg.num_classes, input_size=cfg.input_size,
            pretrained=cfg.pretrained, log=run.log)
        run.num_classes, run.plan = _task_classes(cfg, plan_classes, data), plan
        _data(run, data)
        home = model_device(model)
        inputs = Inputs(cfg.input_size[0], run.device, run.channels_last, cfg.normalize)
        batch_size = min(cfg.batch_size, len(run.datasets[0]))
        stream = _batches(run, batch_size)
        _warm_start(run, model, plan, init_from if init_from is not None else default_init,
                    inputs, stream, teacher)
        state = _fit(run, model, inputs, stream, batch_size, console, show, callbacks)
    model.eval()
    metrics = _report(run, state, data, batch_size)
    model.to(home).to(memory_format=torch.contiguous_format)
    out_dir = None
    if out is not None:
        if plan is None:
            raise CubesearchError("saving a checkpoint needs the model's plan (pass plan=, or train "
                                  "from a model spec so cubesearch can rebuild it)")
        out_dir = Path(out)
        save(out_dir, model, plan, metrics)
        run.log(f"checkpoint: {out_dir}")
    return TrainResult(model=model, metrics=metrics, history=state.history, out_dir=out_dir,
                       plan=plan, init=run.init, distill=run.distill)
