"""`TrainConfig`: how a model trains, as validated data (pydantic, like `SearchSettings`).

`train(model, **options)` builds one from its keyword arguments; `train(model, config=cfg)`
takes one, and `train(model, config=cfg, lr=…)` overrides fields of it. A bad value, however
the config is made, is one `ConfigError` (a `CubesearchError`) naming the option as the CLI
spells it and what it accepts (`--lr must be a positive number, not -1.0`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from cubesearch.core.errors import ConfigError, option_name, validation_message
from cubesearch.training.losses import LOSSES
from cubesearch.training.optim import OPTIMIZERS, SCHEDULERS

DEFAULT_LR = 2e-3  # works from scratch for short budgets with Adam (see README)
DEFAULT_BATCH = 8
DEFAULT_EPOCHS = 5


def _positive(v: float) -> bool:
    return v > 0 and math.isfinite(v)


# field → (test, what it accepts): one rule per numeric option, one message format.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (lambda v: v > 0, "must be positive"),
    "steps": (lambda v: v >= 1, "must be at least 1"),
    "batch_size": (lambda v: v >= 1, "must be at least 1"),
    "eval_every": (lambda v: v >= 1, "must be at least 1"),
    "train_tiles": (lambda v: v >= 1, "must be at least 1"),
    "val_tiles": (lambda v: v >= 1, "must be at least 1"),
    "crops_per_image": (lambda v: v >= 1, "must be at least 1"),
    "num_classes": (lambda v: v >= 1, "must be 1 (binary: buildings or not) or K ≥ 2 (K classes)"),
    "lr": (_positive, "must be a positive number"),
    "new_lr": (_positive, "must be a positive number"),
    "distill_lr": (_positive, "must be a positive number"),
    "grad_clip": (_positive, "must be a positive number"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "must be ≥ 0"),
    "distill_steps": (lambda v: v >= 0, "must be ≥ 0"),
    "kd_weight": (lambda v: 0 <= v < math.inf, "must be ≥ 0"),
    "kd_temperature": (_positive, "must be a positive number"),
    "patience": (lambda v: v >= 1, "must be at least 1"),
    "schedule_start": (lambda v: 0 <= v < math.inf, "must be ≥ 0"),
    "schedule_epochs": (lambda v: v > 0, "must be positive"),
    "workers": (lambda v: v >= 0, "must be ≥ 0"),
    "warmup": (lambda v: 0 <= v < math.inf, "must be ≥ 0 (below 1: a fraction of the steps; "
                                            "else a number of steps)"),
    "min_lr_ratio": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "val_split": (lambda v: 0 < v < 1, "must be in (0, 1)"),
}


def option(field: str) -> str:
    """The CLI's spelling of a field: `batch_size` → `--batch-size` (`num_classes` → `--classes`)."""
    return {"num_classes": "--classes"}.get(field, "--" + field.replace("_", "-"))


class TrainConfig(BaseModel):
    """Every setting of a training run but the model, the data and where the checkpoint goes."""

    model_config = ConfigDict(extra="forbid")
    # budget: epochs (fractions allowed; default DEFAULT_EPOCHS) or steps, not both
    epochs: float | None = None
    steps: int | None = None
    eval_every: int | None = None  # None: each epoch (or only the end with `steps`)
    # data
    input_size: tuple[int, ...] = (3, 256, 256)  # C×H×W training tiles (square)
    batch_size: int = DEFAULT_BATCH
    train_tiles: int | None = None  # synthetic data
    val_tiles: int | None = None
    val_split: float | None = None  # folders without val/
    crops_per_image: int | None = None
    workers: int = 0
    normalize: bool = True
    # task
    num_classes: int | None = None  # None: the plan's, the dataset's, else 1
    loss: str = "bce"
    pretrained: bool = False
    # optimisation
    optimizer: str = "adam"
    lr: float = DEFAULT_LR
    new_lr: float | None = None  # with a warm start: the parameters it did not load
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    warmup: float = 0.05
    min_lr_ratio: float = 0.01
    grad_clip: float | None = None
    distill_steps: int = 0
    distill_lr: float = 1e-2
    # the final recipe (`cubesearch.training.finetune`): logit distillation from the unconverted
    # teacher, the best validation weights kept, early stopping after `patience` evaluations
    kd_weight: float = 0.0
    kd_temperature: float = 1.0
    keep_best: bool = False
    patience: int | None = None
    # a segment of a longer schedule (halving rungs): the lr follows the schedule of
    # `schedule_epochs` from epoch `schedule_start` on; None: the schedule is this run's own
    schedule_epochs: float | None = None
    schedule_start: float = 0.0
    # the run
    seed: int = 0
    device: str | None = None  # None / auto: CUDA if there is one
    amp: bool | None = None  # None: on with CUDA
    channels_last: bool | None = None  # None: on
    deterministic: bool = False
    progress: bool = True

    def __init__(self, **options: Any) -> None:
        try:
            super().__init__(**options)
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, type(self).model_fields)) from None

    @field_validator(*_RULES)
    @classmethod
    def _in_range(cls, value: Any, info: Any) -> Any:
        test, accepts = _RULES[info.field_name]
        if value is not None and not test(value):
            raise ValueError(f"{option_name(info.field_name)} {accepts}, not {value}")
        return value

    @field_validator("input_size")
    @classmethod
    def _square_tiles(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(value) != 3 or min(value) < 1:
            raise ValueError(f"input size {value} is not (C, H, W)")
        if value[1] != value[2]:
            raise ValueError(f"training tiles are square: input size {value} has H ≠ W")
        return value

    @field_validator("loss", "optimizer", "scheduler")
    @classmethod
    def _known_name(cls, value: str, info: Any) -> str:
        name = str(value).lower().replace(" ", "")
        known = {"loss": LOSSES, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS}[info.field_name]
        if name not in known:
            raise ValueError(f"unknown {info.field_name} {name!r} (choose from {', '.join(known)})")
        return name

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> Any:
        if value is None or str(value) == "auto":
            return None
        try:
            return str(torch.device(value))
        except (RuntimeError, TypeError):
            raise ValueError(f"--device {value!r} is not a device (auto, cpu, cuda, cuda:1, …)"
                             ) from None

    @model_validator(mode="after")
    def _one_budget(self) -> TrainConfig:
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give --epochs or --steps, not both")
        return self

    @classmethod
    def build(cls, config: TrainConfig | None = None, **options: Any) -> TrainConfig:
        """`config` (or the defaults) with `options` on top, validated; a bad value raises one
        `CubesearchError` naming the option."""
        return cls(**{**(config.model_dump() if config is not None else {}), **options})
