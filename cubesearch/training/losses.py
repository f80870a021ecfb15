"""What a model's output is and how far it is from the mask: `logits_of`, `make_loss`.

`bce`: binary cross-entropy for K = 1 (the paper's), cross-entropy (softmax) for K ≥ 2 (`ce` is
the same); `dice`: soft Dice (1 − 2|P∩T| / (|P| + |T|), smoothed by 1) over the batch, per class
for K ≥ 2; `bce+dice`: their sum. Pixels whose target is 255 are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from cubesearch.core.errors import CubesearchError
from cubesearch.training.data.transforms import IGNORE_INDEX

LOSSES = ("bce", "ce", "dice", "bce+dice", "ce+dice")

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrainingDiverged(CubesearchError):
    """The loss became NaN or infinite: the run stops rather than report a metric."""


def loss_name(name: str) -> str:
    """The canonical spelling of a loss name ('BCE + Dice' → 'bce+dice'); raises on others."""
    canonical = str(name).lower().replace(" ", "")
    if canonical not in LOSSES:
        raise CubesearchError(f"unknown loss {canonical!r} (choose from {', '.join(LOSSES)})")
    return canonical


def logits_of(output: Any, size: tuple[int, int]) -> torch.Tensor:
    """The (B, K, H, W) logits in a model's output (tensor, dict with 'out', tuple), resized to
    the input's H×W when the model predicts at a lower resolution."""
    out = output
    if isinstance(out, dict):
        out = out.get("out", next(iter(out.values()), None))
    if isinstance(out, (tuple, list)):
        out = out[0] if out else None
    if not isinstance(out, torch.Tensor):
        raise CubesearchError(f"the model returned {type(output).__name__}, not a tensor of logits")
    if out.dim() != 4:
        raise CubesearchError(
            f"the model returns shape {tuple(out.shape)}, not (B, K, H, W) segmentation logits "
            "(a classifier? use a segmentation model such as smp:Unet:resnet18)")
    if tuple(out.shape[-2:]) != tuple(size):
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
    return out


def check_classes(logits: torch.Tensor, k: int) -> None:
    """The model's output channels agree with the task's classes."""
    if logits.shape[1] != k:
        raise CubesearchError(f"the model outputs {logits.shape[1]} channel(s) but the task has "
                              f"{k} class{'es' if k > 1 else ''} (--classes {k}); build the model "
                              f"with num_classes={k}")


def _valid_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return values.mean()
    return (values * valid).sum() / valid.sum().clamp_min(1)


def _binary(parts: list[str], logits: torch.Tensor, target: torch.Tensor,
            valid: torch.Tensor | None) -> torch.Tensor:
    total = logits.new_zeros(())
    t = (target == 1).float()
    x = logits[:, 0]
    if "bce" in parts or "ce" in parts:
        total = total + _valid_mean(F.binary_cross_entropy_with_logits(x, t, reduction="none"), valid)
    if "dice" in parts:
        p = torch.sigmoid(x)
        if valid is not None:
            p, t = p * valid, t * valid
        total = total + 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return total


def _multiclass(parts: list[str], logits: torch.Tensor, target: torch.Tensor,
                valid_mask: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    total = logits.new_zeros(())
    k = logits.shape[1]
    if "bce" in parts or "ce" in parts:
        total = total + F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    if "dice" in parts:
        p = torch.softmax(logits, 1)
        t = F.one_hot(torch.where(valid_mask, target, 0), k).permute(0, 3, 1, 2).float()
        if valid is not None:
            p, t = p * valid[:, None], t * valid[:, None]
        inter = (p * t).sum((0, 2, 3))
        dice = (2 * inter + 1) / (p.sum((0, 2, 3)) + t.sum((0, 2, 3)) + 1)
        total = total + 1 - dice.mean()
    return total


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0
                      ) -> torch.Tensor:
    """Logit distillation (Hinton et al.): the student's tempered prediction against the
    teacher's, per pixel, times T² so its gradient keeps its size whatever T. K = 1: binary
    cross-entropy to sigmoid(teacher / T); K ≥ 2: KL(softmax(teacher / T) ‖ softmax(student / T))."""
    s, t = student.float() / temperature, teacher.float().detach() / temperature
    if s.shape[1] == 1:
        value = F.binary_cross_entropy_with_logits(s, torch.sigmoid(t))
    else:
        value = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True,
                         reduction="none").sum(1).mean()
    return value * temperature**2


def make_loss(name: str, num_classes: int) -> Loss:
    """loss(logits (B, K, H, W), target (B, H, W) long with 255 = ignore) → scalar; see the
    module docstring for the names."""
    parts = loss_name(name).split("+")

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        valid_mask = target != IGNORE_INDEX
        valid = None if bool(valid_mask.all()) else valid_mask.float()
        if num_classes == 1:
            return _binary(parts, logits, target, valid)
        return _multiclass(parts, logits, target, valid_mask, valid)

    return loss
