"""Multi-objective promotion for successive halving (MO-ASHA's rule, Schmucker et al. 2021):
rank the rung's results by non-dominated sorting, break ties inside the last front that fits
by hypervolume contribution, and promote the best `k`.

Pure functions over "lower is better" rows (IoU enters as −IoU), so the strategy, the
calibration benchmark's replay and the tests share one rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from optuna.study._multi_objective import _fast_non_domination_rank

from cubesearch.search.pareto import loss_hypervolume


def loss_rows(ious: Sequence[float], costs: Sequence[float]) -> np.ndarray:
    """(−IoU, cost) rows: both objectives lower-is-better."""
    return np.column_stack([-np.asarray(ious, dtype=float), np.asarray(costs, dtype=float)])


def default_reference(losses: np.ndarray) -> np.ndarray:
    """A reference point just beyond the worst value of each objective (every row counts)."""
    worst = losses.max(axis=0)
    return worst + np.maximum(np.abs(worst) * 0.01, 1e-9)


def contributions(losses: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each row's exclusive hypervolume contribution within `losses`."""
    total = loss_hypervolume(losses, reference)
    keep = np.ones(len(losses), dtype=bool)
    out = np.zeros(len(losses))
    for i in range(len(losses)):
        keep[i] = False
        out[i] = total - loss_hypervolume(losses[keep], reference)
        keep[i] = True
    return out


def promote(losses: np.ndarray, k: int, reference: np.ndarray | None = None) -> list[int]:
    """The indices of the `k` rows to promote, best first: whole non-dominated fronts in rank
    order; in the front that overflows, the largest hypervolume contributions first."""
    losses = np.asarray(losses, dtype=float)
    if k <= 0 or len(losses) == 0:
        return []
    reference = default_reference(losses) if reference is None else np.asarray(reference, dtype=float)
    ranks = _fast_non_domination_rank(losses)
    chosen: list[int] = []
    for rank in sorted(set(ranks.tolist())):
        front = np.flatnonzero(ranks == rank)
        gains = contributions(losses[front], reference)
        order = sorted(range(len(front)), key=lambda j: (-gains[j], losses[front[j]][0]))
        chosen += [int(front[j]) for j in order]
        if len(chosen) >= k:
            break
    return chosen[:k]


def rung_sizes(n: int, eta: int, rungs: int) -> list[int]:
    """How many trials each rung trains: n, n/η, n/η², … (at least 1)."""
    return [max(1, n // eta**r) for r in range(rungs)]
