"""Scoring a plan in the supernet: set its path, re-estimate the BatchNorm statistics it changes on
a few fixed training batches, evaluate on the validation tiles, restore the statistics.

Why re-estimate: the supernet's shared BatchNorms hold running statistics of the unconverted
path (`reference_statistics`, run once after training), while a plan changes the inputs of every
BatchNorm after its first replaced site, and its blocks' own BatchNorms are shared with other
configurations. Once-for-All and BigNAS recompute them per sub-network the same way; the
ablation in `benchmarks/results/oneshot.md` measures what it is worth here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cubesearch.errors import CubesearchError
from cubesearch.helpers import model_device
from cubesearch.training import evaluate
from cubesearch.training.inputs import normalised
from cubesearch.training.norms import (
    Norm,
    cumulative_statistics,
    restore_statistics,
    save_statistics,
    tracked_norms,
)


def fixed_batches(dataset: Any, n: int, batch_size: int, seed: int = 0) -> list[Tensor]:
    """`n` batches of normalised images drawn once (seeded) from `dataset`: the same tensors
    every time, so scores are deterministic."""
    if n < 1:
        return []
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True,
                        drop_last=True, generator=gen)
    epoch = getattr(dataset, "epoch", None)
    if hasattr(dataset, "set_epoch"):  # the same augmentations whatever epoch training reached
        dataset.set_epoch(0)
    out = []
    try:
        while len(out) < n:
            for image, _ in loader:
                out.append(normalised(image, getattr(dataset, "in_channels", None)))
                if len(out) == n:
                    break
    finally:
        if epoch is not None:
            dataset.set_epoch(epoch)
    return out


@torch.no_grad()
def reestimate(net: nn.Module, norms: Sequence[Norm], batches: Sequence[Tensor]) -> None:
    """Replace the running statistics of `norms` by their cumulative average over `batches`
    (forward passes, everything else in eval mode). Leaves the model in eval mode."""
    norms = tracked_norms(norms)
    device = model_device(net)
    net.eval()
    for bn in norms:
        bn.train()
    try:
        with cumulative_statistics(norms):
            for x in batches:
                net(x.to(device))
    finally:
        for bn in norms:
            bn.eval()


@contextlib.contextmanager
def reestimated(net: nn.Module, norms: Sequence[Norm], batches: Sequence[Tensor]) -> Iterator[None]:
    """Within the block `norms` hold statistics re-estimated on `batches`; the previous ones come
    back afterwards (also on error)."""
    norms = tracked_norms(norms)
    saved = save_statistics(norms)
    try:
        reestimate(net, norms, batches)
        yield
    finally:
        restore_statistics(saved)


def reference_statistics(supernet: Any, batches: Sequence[Tensor]) -> None:
    """Set every BatchNorm of the model (not the blocks) to the unconverted path's statistics on
    `batches`: the reference that per-plan re-estimation starts from. Records the execution order."""
    if not batches:
        raise CubesearchError("reference statistics need at least one batch")
    block = {id(m) for s in supernet.sites.values() for m in s.units.modules()}
    norms = [m for m in supernet.net.modules() if isinstance(m, Norm) and id(m) not in block]
    with supernet.using({}):
        reestimate(supernet.net, norms, batches)
    supernet.record_order(batches[0][:1])


class Scorer:
    """`scorer(plan)` → the plan's validation metrics in the supernet (IoU, F1, …, `seconds`).

    `calib_batches` training batches (drawn once, seeded) re-estimate the BatchNorms the plan
    changes (`recalibrate=False` skips it: the ablation). The supernet's plan and statistics are
    restored afterwards, so scores do not depend on what was scored before."""

    def __init__(self, supernet: Any, train_ds: Any, val_ds: Any, *, calib_batches: int = 8,
                 batch_size: int = 8, seed: int = 0, recalibrate: bool = True,
                 loss: str = "bce", num_classes: int | None = None,
                 channels_last: bool = True) -> None:
        self.supernet, self.val_ds = supernet, val_ds
        self.batch_size, self.recalibrate, self.loss = batch_size, recalibrate, loss
        self.num_classes = int(num_classes or getattr(val_ds, "num_classes", 1) or 1)
        self.channels_last = channels_last
        self.batches = fixed_batches(train_ds, calib_batches, batch_size, seed)
        if channels_last:
            self.batches = [b.contiguous(memory_format=torch.channels_last) for b in self.batches]
        if supernet._order is None:
            probe = self.batches[0][:1] if self.batches else normalised(
                val_ds[0][0].unsqueeze(0), getattr(val_ds, "in_channels", None))
            supernet.record_order(probe)

    def __call__(self, plan: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        sup = self.supernet
        device = model_device(sup)
        with sup.using(plan):
            norms = sup.changed_norms() if self.recalibrate else []
            ctx = reestimated(sup.net, norms, self.batches) if norms else contextlib.nullcontext()
            with ctx:
                metrics = evaluate(sup.net, self.val_ds, batch_size=self.batch_size,
                                   num_classes=self.num_classes, loss=self.loss, device=device,
                                   channels_last=self.channels_last)
        metrics = dict(metrics)
        metrics.update(seconds=time.perf_counter() - t0, bn_reestimated=len(norms),
                       gflops=(sup.flops(plan) or 0) / 1e9 if sup.cost is not None else None)
        return metrics


def score(supernet: Any, plan: Any, train_ds: Any, val_ds: Any, **kwargs: Any) -> dict[str, Any]:
    """One plan's metrics (`Scorer(supernet, train_ds, val_ds, **kwargs)(plan)`)."""
    return Scorer(supernet, train_ds, val_ds, **kwargs)(plan)
