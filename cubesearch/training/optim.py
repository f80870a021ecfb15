"""Optimisers and learning-rate schedules by name, from two tables (as timm's
`create_optimizer_v2` / `create_scheduler_v2`): add an entry to `OPTIMIZERS` or `SCHEDULERS` and
`TrainConfig`, `train` and the CLI accept its name.

- `OPTIMIZERS[name](param_groups, lr, weight_decay) → torch.optim.Optimizer`: `adam` (the
  paper's), `adamw` (weight decay 0.01 when 0 is asked), `sgd` (momentum 0.9, Nesterov).
- `SCHEDULERS[name](step, total, warmup, min_ratio) → factor of the peak lr` for the step after
  `step` optimiser steps: linear warmup `(step + 1) / (warmup + 1)` over the first `warmup`
  steps, then with `p = (step − warmup) / (total − warmup)` (at most 1):
  `cosine`: `min_ratio + (1 − min_ratio)·½(1 + cos πp)`; `linear`: `1 − (1 − min_ratio)·p`;
  `constant`: 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cubesearch.core.errors import CubesearchError

OptimizerFactory = Callable[[list[dict[str, Any]], float, float], torch.optim.Optimizer]
Schedule = Callable[[int, int, int, float], float]


def _adam(groups: list[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)


def _adamw(groups: list[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay or 1e-2)


def _sgd(groups: list[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)


OPTIMIZERS: dict[str, OptimizerFactory] = {"adam": _adam, "adamw": _adamw, "sgd": _sgd}


def _warming(step: int, warmup: int) -> float | None:
    return (step + 1) / (warmup + 1) if step < warmup else None


def _progress(step: int, total: int, warmup: int) -> float:
    return min((step - warmup) / max(1, total - warmup), 1.0)


def cosine(step: int, total: int, warmup: int, min_ratio: float = 0.01) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `min_ratio` at `total`."""
    warm = _warming(step, warmup)
    if warm is not None:
        return warm
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * _progress(step, total, warmup)))


def linear(step: int, total: int, warmup: int, min_ratio: float = 0.01) -> float:
    """Linear warmup, then linear decay to `min_ratio` at `total`."""
    warm = _warming(step, warmup)
    return warm if warm is not None else 1 - (1 - min_ratio) * _progress(step, total, warmup)


def constant(step: int, total: int, warmup: int, min_ratio: float = 0.01) -> float:
    """Linear warmup, then the peak learning rate."""
    warm = _warming(step, warmup)
    return warm if warm is not None else 1.0


SCHEDULERS: dict[str, Schedule] = {"cosine": cosine, "linear": linear, "constant": constant}


def _pick(table: dict[str, Any], kind: str, name: str) -> Any:
    factory = table.get(str(name).lower())
    if factory is None:
        raise CubesearchError(f"unknown {kind} {name!r} (choose from {', '.join(table)})")
    return factory


def param_groups(model: nn.Module, lr: float, new_lr: float | None,
                 init_report: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The optimiser's groups: with a warm start and `new_lr`, the parameters it did not load
    (the new blocks) peak at `new_lr` and the loaded ones at `lr`; otherwise one group."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if new_lr is None or init_report is None:
        return [{"params": [p for _, p in named], "lr": lr}] if named else []
    loaded = set(init_report["loaded_names"])
    groups = [{"params": [p for n, p in named if n in loaded], "lr": lr},
              {"params": [p for n, p in named if n not in loaded], "lr": new_lr}]
    return [g for g in groups if g["params"]]


def create_optimizer(name: str, params: Any, *, lr: float, weight_decay: float = 0.0
                     ) -> torch.optim.Optimizer:
    """`OPTIMIZERS[name]` over `params` (parameters or param groups, each group keeping its own
    lr) at peak `lr`."""
    groups = list(params)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups, "lr": lr}]
    if not any(g["params"] for g in groups):
        raise CubesearchError("the model has no trainable parameters")
    return _pick(OPTIMIZERS, "optimizer", name)(groups, lr, weight_decay)


def warmup_steps(warmup: float, total_steps: int) -> int:
    """`warmup` ≥ 1 is a number of steps, below 1 a fraction of `total_steps`."""
    return int(warmup) if warmup >= 1 else int(round(warmup * total_steps))


def create_scheduler(name: str, optimizer: torch.optim.Optimizer, *, total_steps: int,
                     warmup: float = 0.0, min_lr_ratio: float = 0.01, start_step: int = 0
                     ) -> torch.optim.lr_scheduler.LambdaLR:
    """`SCHEDULERS[name]` as a `LambdaLR` stepped once per optimiser step over `total_steps`;
    `start_step`: this run is the schedule's continuation from that step (a halving rung's
    survivor trains on where its rung stopped)."""
    schedule = _pick(SCHEDULERS, "scheduler", name)
    n_warm = warmup_steps(warmup, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: schedule(s + start_step, total_steps, n_warm, min_lr_ratio))
