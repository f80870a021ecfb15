"""Rank agreement between two scorings of the same plans: Kendall τ-b, Spearman ρ, top-k overlap.

Plain Python (scipy is not a dependency); ties are handled as scipy does (τ-b; ρ as the Pearson
correlation of average ranks). Tested against hand-computed examples in tests/test_supernet.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _check(x: Sequence[float], y: Sequence[float]) -> None:
    if len(x) != len(y):
        raise ValueError(f"the two scorings differ in length ({len(x)} vs {len(y)})")
    if len(x) < 2:
        raise ValueError("rank correlation needs at least two items")


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b: (concordant − discordant) / sqrt((n0 − ties_x)(n0 − ties_y)); NaN when
    one scoring is constant."""
    _check(x, y)
    n = len(x)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0:
                ties_x += 1
            if dy == 0:
                ties_y += 1
            if dx == 0 or dy == 0:
                continue
            if (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    n0 = n * (n - 1) // 2
    denom = math.sqrt((n0 - ties_x) * (n0 - ties_y))
    return (concordant - discordant) / denom if denom else float("nan")


def ranks(x: Sequence[float]) -> list[float]:
    """1-based ranks, ties getting the average of the ranks they span."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    out = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: the Pearson correlation of the average ranks; NaN when one is constant."""
    _check(x, y)
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx and vy else float("nan")


def top_k_overlap(x: Sequence[float], y: Sequence[float], k: int = 3) -> float:
    """Share of the k best items (highest values) of `x` that are also among the k best of `y`."""
    _check(x, y)
    k = min(k, len(x))
    top = lambda v: set(sorted(range(len(v)), key=lambda i: -v[i])[:k])  # noqa: E731
    return len(top(x) & top(y)) / k
