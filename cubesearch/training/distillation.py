"""Local distillation: before end-to-end training, each Cube block is fitted to stand in for
what it replaces, on the trained teacher's own activations.

A block replacing a conv at a site learns to reproduce the conv's output from the conv's
input; a block inserted after a module (computing y + block(y)) learns to output 0 on that
module's y, so the converted model starts as close to the baseline as the blocks allow. The
loss is the MSE normalised by the target's variance, averaged over blocks; only the blocks'
parameters move. The blocks' BatchNorm statistics are then re-estimated on a few fresh
batches, so that they behave in eval mode as they were fitted in train mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cubesearch.core.errors import CubesearchError
from cubesearch.plan.conversion import BLOCK_KEY
from cubesearch.training.inputs import autocast
from cubesearch.training.losses import TrainingDiverged
from cubesearch.training.norms import cumulative_statistics, tracked_norms

BN_RECALIBRATION_BATCHES = 8  # batches to re-estimate BatchNorm statistics after distillation

# (name in the teacher, the student's module, inserted?)
Target = tuple[str, nn.Module, bool]


def _targets(model: nn.Module, teacher: nn.Module, sites: Sequence[str],
             insertions: Sequence[str]) -> tuple[list[Target], dict[str, nn.Module]]:
    if not sites and not insertions:
        raise CubesearchError("--distill-steps: the plan neither replaces nor inserts anything; "
                              "there is nothing to distil")
    named = [(n, n, False) for n in sites] + [(n, f"{n}.{BLOCK_KEY}", True) for n in insertions]
    targets, teachers = [], {}
    for name, student_name, inserted in named:
        try:
            targets.append((name, model.get_submodule(student_name), inserted))
            teachers[name] = teacher.get_submodule(name)
        except AttributeError:
            raise CubesearchError(f"--distill-steps: {name!r} is not in both the converted model "
                                  "and the baseline") from None
    return targets, teachers


def _block_loss(student: nn.Module, inp: torch.Tensor, out_t: torch.Tensor, inserted: bool,
                device: torch.device, amp: bool) -> torch.Tensor:
    if inserted:  # y + block(y) ≈ y  ⇔  block(y) ≈ 0, on the scale of y
        with autocast(device, amp):
            out = student(out_t)
        return normalised_mse(out, torch.zeros_like(out_t, dtype=torch.float32), scale=out_t)
    with autocast(device, amp):
        out = student(inp)
    return normalised_mse(out, out_t)


def normalised_mse(out: torch.Tensor, target: torch.Tensor,
                   scale: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of `out` against `target`, divided by the variance of `scale` (default: the target),
    so every block's loss is on the same footing whatever its activations' magnitude."""
    var = (target if scale is None else scale).float().var().clamp_min(1e-6)
    return F.mse_loss(out.float(), target.float()) / var


def _recalibrate(targets: list[Target], teacher: nn.Module, captured: dict, batches: Callable,
                 n: int, device: torch.device, amp: bool) -> None:
    """Re-estimate the blocks' BatchNorm running statistics (cumulative average, no gradient)."""
    norms = tracked_norms(m for _, student, _ in targets for m in student.modules())
    with torch.no_grad(), cumulative_statistics(norms):
        for _ in range(n if norms else 0):
            captured.clear()
            with autocast(device, amp):
                teacher(batches())
                for name, student, inserted in targets:
                    inp, out_t = captured[name]
                    student(out_t if inserted else inp)


def distill(model: nn.Module, teacher: nn.Module, sites: list[str], batches: Callable[[], torch.Tensor],
            steps: int, *, insertions: Sequence[str] = (), lr: float = 1e-3, device: torch.device,
            amp: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit the blocks at `sites` and after `insertions` to the teacher for `steps` batches of
    `batches()` (see the module docstring). Returns the mean loss of the first and last step
    and per block."""
    targets, teachers = _targets(model, teacher, sites, insertions)
    teacher.to(device).eval()
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str) -> Callable:
        def fn(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            captured[name] = (args[0].detach(), output.detach())
        return fn

    handles = [teachers[n].register_forward_hook(hook(n)) for n, _, _ in targets]
    for _, student, _ in targets:
        student.train()
    opt = torch.optim.Adam([p for _, student, _ in targets for p in student.parameters()], lr=lr)
    losses: list[float] = []
    per_block: dict[str, float] = {}
    try:
        for step in range(steps):
            captured.clear()
            with torch.no_grad(), autocast(device, amp):
                teacher(batches())
            errors = []
            for name, student, inserted in targets:
                if name not in captured:
                    raise CubesearchError(f"--distill-steps: the baseline's forward never calls {name!r}")
                errors.append(_block_loss(student, *captured[name], inserted, device, amp))
                per_block[name] = float(errors[-1].detach())
            total = torch.stack(errors).mean()
            if not torch.isfinite(total):
                raise TrainingDiverged(f"distillation loss is {float(total)} at step {step + 1}; "
                                       "lower --lr")
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            losses.append(float(total.detach()))
        _recalibrate(targets, teacher, captured, batches, min(steps, BN_RECALIBRATION_BATCHES),
                     device, amp)
    finally:
        for h in handles:
            h.remove()
    first, last = (losses[0], losses[-1]) if losses else (float("nan"), float("nan"))
    if log:
        log(f"distillation: {len(targets)} block(s), {steps} steps, normalised MSE "
            f"{first:.4f} → {last:.4f}")
    return {"steps": steps, "blocks": len(targets), "loss_start": first, "loss_end": last,
            "block_loss": per_block}
