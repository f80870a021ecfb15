"""Small statistics the benchmarks share: Kendall τ (scipy) and percentile-bootstrap intervals.

Why a bootstrap: the benchmarks rank 4-12 plans trained under 2-3 seeds, so a τ or a ratio moves
by whole discordant pairs; an interval says how far one such figure can be trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import kendalltau

FLAT_WINDOW, FLAT_DELTA = 4, 0.01  # flattened: the last 4 epochs add < 0.01 to the best IoU before
BOOT = 2000  # bootstrap resamples
BOOT_SEED = 0


def tau(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall τ-b of two equally long sequences; None when it is undefined (fewer than 3 items,
    or one side constant)."""
    if len(a) < 3:
        return None
    t = kendalltau(np.asarray(a, float), np.asarray(b, float)).statistic
    return None if t is None or np.isnan(t) else float(t)


def bootstrap_ci(stat: Callable[[np.ndarray], float | None], n: int, *, boot: int = BOOT,
                 seed: int = BOOT_SEED, level: float = 0.95) -> list[float] | None:
    """Percentile interval of `stat(idx)` over `boot` resamples of the indices 0..n-1 with
    replacement (the caller's statistic reads its own data at those indices). Resamples where
    the statistic is undefined are dropped; None when fewer than half remain."""
    rng = np.random.default_rng(seed)
    vals = [v for _ in range(boot) if (v := stat(rng.integers(0, n, n))) is not None
            and np.isfinite(v)]
    if len(vals) < boot // 2:
        return None
    lo, hi = np.percentile(vals, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value)."""
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def flattened(curve: Sequence[float]) -> bool:
    """The val IoU curve has flattened: its last FLAT_WINDOW epochs raise the best IoU before
    them by less than FLAT_DELTA (else the figure is "after N epochs", not converged)."""
    if len(curve) <= FLAT_WINDOW:
        return False
    return max(curve[-FLAT_WINDOW:]) - max(curve[:-FLAT_WINDOW]) < FLAT_DELTA
