"""The training loop: steps over batches, and tells its callbacks what happened.

`fit(state)` runs `state.total_steps` optimiser steps. Everything else — evaluating on the
validation set, recording the history, the progress bar — is a callback
(`cubesearch.training.callbacks`), called with the shared `FitState` at each event:
`on_fit_start`, `on_step_end`, `on_evaluate_start`, `on_evaluate(row)`, `on_fit_end` (always,
also when a step raises). A callback may set `state.stop` to end the run early (early stopping).
With a `teacher`, the loss adds `kd_weight` × logit distillation (the recorded training loss
stays the task's, so runs with and without a teacher compare). A NaN/inf loss stops the run
with `TrainingDiverged`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cubesearch.training.inputs import Inputs, autocast
from cubesearch.training.losses import TrainingDiverged, check_classes, distillation_loss, logits_of
from cubesearch.training.metrics import SegmentationMetrics


@dataclass
class FitState:
    """What the loop and its callbacks share; callbacks read it and may add to it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    inputs: Inputs
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    num_classes: int
    total_steps: int
    steps_per_epoch: int
    lr: float = 0.0  # the peak, for the divergence message
    amp: bool = False
    grad_clip: float | None = None
    scaler: Any = None
    callbacks: Sequence[Any] = ()
    teacher: nn.Module | None = None  # logit distillation: the student also matches its outputs
    kd_weight: float = 0.0
    kd_temperature: float = 1.0
    stop: bool = False  # a callback (early stopping) ends the run after this step
    started: float = field(default_factory=time.perf_counter)
    step: int = 0
    running: SegmentationMetrics | None = None  # training metrics since the last evaluation
    val_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    images: int = 0
    best_step: int | None = None  # the step whose weights the run returns (`BestWeights`)

    def __post_init__(self) -> None:
        if self.running is None:
            self.running = SegmentationMetrics(self.num_classes, device=self.inputs.device)

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch

    def emit(self, event: str, *args: Any) -> None:
        """Call `event` on every callback that has it, in order."""
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if method is not None:
                method(self, *args)


def _backward(state: FitState, value: torch.Tensor) -> None:
    opt, scaler = state.optimizer, state.scaler
    params = [p for g in opt.param_groups for p in g["params"]]
    opt.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(value).backward()
        if state.grad_clip:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(params, state.grad_clip)
        scaler.step(opt)
        scaler.update()
    else:
        value.backward()
        if state.grad_clip:
            nn.utils.clip_grad_norm_(params, state.grad_clip)
        opt.step()
    state.scheduler.step()


def train_step(state: FitState, image: torch.Tensor, mask: torch.Tensor) -> int:
    """One optimiser step on one batch; returns the batch size."""
    x, y = state.inputs(image, mask)
    with autocast(state.device, state.amp):
        logits = logits_of(state.model(x), tuple(y.shape[-2:]))
    if state.step == 1:
        check_classes(logits, state.num_classes)
    task = state.loss_fn(logits, y)
    value = task + state.kd_weight * _distillation(state, x, logits) if state.teacher is not None else task
    loss_value = float(task.detach())
    total = float(value.detach())
    if not math.isfinite(total):
        raise TrainingDiverged(
            f"loss became {total} at step {state.step} of {state.total_steps} (epoch "
            f"{(state.step - 1) / state.steps_per_epoch:.2f}); lower --lr (now {state.lr:g}) or "
            "check the data")
    _backward(state, value)
    state.running.update(logits.detach(), y, loss_value)
    if state.device.type == "cuda":
        torch.cuda.synchronize(state.device)
    return x.shape[0]


def _distillation(state: FitState, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    assert state.teacher is not None
    with torch.no_grad(), autocast(state.device, state.amp):
        target = logits_of(state.teacher(x), tuple(logits.shape[-2:]))
    return distillation_loss(logits, target, state.kd_temperature)


def fit(state: FitState) -> FitState:
    """Run the steps, with the callbacks around them (see the module docstring)."""
    state.emit("on_fit_start")
    try:
        state.model.train()
        for step in range(1, state.total_steps + 1):
            state.step = step
            image, mask = next(state.batches)
            t0 = time.perf_counter()
            state.images += train_step(state, image, mask)
            state.train_seconds += time.perf_counter() - t0
            state.emit("on_step_end")
            if state.stop:
                break
    finally:
        state.emit("on_fit_end")
    return state
