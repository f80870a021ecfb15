"""BatchNorm statistics re-estimated as a cumulative average over a few batches: distillation
re-estimates its blocks' statistics this way (Once-for-All and BigNAS do the same per sub-network)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

from torch import nn

Norm = nn.modules.batchnorm._BatchNorm
STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def tracked_norms(modules: Iterable[nn.Module]) -> list[Norm]:
    """The BatchNorms among `modules` that keep running statistics, each once, in order."""
    seen: set[int] = set()
    out = []
    for m in modules:
        if isinstance(m, Norm) and m.track_running_stats and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


@contextlib.contextmanager
def cumulative_statistics(norms: Sequence[Norm]) -> Iterator[None]:
    """Within the block, forward passes set `norms`' running statistics to the plain average over
    those passes (reset, momentum None); their momentum comes back afterwards."""
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum

