"""benchmarks/fidelity_stats.py: the cross-seed τ, its bootstrap interval and the equal-epoch replay
(issue 30), checked against hand-counted pairs and the epoch formula."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import fidelity_stats  # noqa: E402
from _stats import bootstrap_ci, tau  # noqa: E402


def test_cross_seed_tau_pairs_each_seed_signal_with_the_other_seeds_iou():
    # seed 0's signal orders plans 0<1<2<3, seed 1's IoU swaps the last two: 5 concordant,
    # 1 discordant pair of 6 → τ = 4/6; seed 1's signal against seed 0's IoU: 1 swap too → 4/6
    by_seed = {0: [1.0, 2.0, 3.0, 4.0], 1: [0.1, 0.2, 0.3, 0.35]}
    iou = {0: [0.1, 0.2, 0.4, 0.3], 1: [0.1, 0.2, 0.4, 0.3]}
    r = fidelity_stats.cross_tau("rung3", by_seed, iou)
    assert r["pairs"]["0->1"] == pytest.approx(4 / 6)
    assert r["pairs"]["1->0"] == pytest.approx(4 / 6)
    assert r["tau"] == pytest.approx(4 / 6) and r["n"] == 4
    # lower-is-better signals are negated: the training-loss sum in reverse order ranks perfectly
    loss = {0: [4.0, 3.0, 1.0, 2.0], 1: [4.0, 3.0, 1.0, 2.0]}
    assert fidelity_stats.cross_tau("tse3", loss, iou)["tau"] == pytest.approx(1.0)
    # a plan missing the signal under one seed is left out
    by_seed[1][2] = None
    assert fidelity_stats.cross_tau("rung3", by_seed, iou)["n"] == 3


def test_the_bootstrap_interval_brackets_the_statistic_and_is_degenerate_when_it_cannot_move():
    a, b = [1, 2, 3, 4, 5, 6, 7, 8], [1, 3, 2, 4, 6, 5, 8, 7]
    t = tau(a, b)
    assert t == pytest.approx((25 - 3) / 28)  # 3 adjacent swaps of 28 pairs
    lo, hi = bootstrap_ci(lambda idx: tau([a[i] for i in idx], [b[i] for i in idx]), len(a))
    assert lo <= t <= hi < 1.0 + 1e-12 and lo > -1.0
    assert bootstrap_ci(lambda idx: tau([a[i] for i in idx], [a[i] for i in idx]), len(a)) == [1.0, 1.0]
    assert tau([1, 2], [1, 2]) is None and tau([1, 1, 1], [1, 2, 3]) is None


def test_the_equal_epoch_replay_charges_both_sides_the_same_epochs():
    plans = [{"label": f"p{i}", "gflops": float(g), "rung1": r1, "rung3": r3, "trial2": t2, "iou": io}
             for i, (g, r1, r3, t2, io) in enumerate([(1, .1, .2, .2, .3), (2, .2, .3, .3, .4),
                                                      (3, .3, .4, .4, .5), (4, .4, .5, .5, .6),
                                                      (5, .5, .6, .6, .7), (6, .6, .7, .7, .8)])]
    r = fidelity_stats.replay_equal(plans, top_epochs=8)
    # halving: 6 plans × 1 + 6//3 = 2 promoted × 2 + 2//3 → 1 on top × (8 − 3) = 15 epochs;
    # trials: 6 × 2 = 12, 3 left: no finalist fits (8 epochs each)
    assert r["epochs"] == {"halving": 15.0, "trials": 12.0} and r["trials_finalists"] == 0
    assert len(r["halving_front"]) == 1 and len(r["trials_front"]) == 6
    r = fidelity_stats.replay_equal(plans, top_epochs=4)  # 6 + 4 + 1 = 11: still no 4-epoch finalist
    assert r["epochs"]["halving"] == 11.0 and r["trials_finalists"] == 0
