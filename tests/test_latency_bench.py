"""benchmarks/latency.py's latency-search headline counts only plans that are models (issue 30):
IoU ≥ 0.9× the unconverted reference trained by the same recipe."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import latency  # noqa: E402


def _row(trial, flops, measured, iou):
    return {"trial": trial, "flops_ratio": flops, "measured_ratio": measured, "iou": iou}


def test_the_best_plan_is_the_fastest_usable_one_with_30pct_fewer_flops():
    rows = [_row(1, 0.69, 0.80, 0.0),     # fastest, but predicts one class: not a model
            _row(2, 0.65, 0.85, 0.46),    # usable: 0.92× the reference
            _row(3, 0.60, 0.90, 0.50),    # usable, slower
            _row(4, 0.75, 0.70, 0.50)]    # usable and fast, but < 30 % fewer FLOPs
    best = latency.best_usable(rows, reference_iou=0.5)
    assert best["trial"] == 2 and best["iou_ratio"] == pytest.approx(0.92)
    assert [r["usable"] for r in rows] == [False, True, True, True]
    assert latency.best_usable(rows, reference_iou=None) is None  # nothing certified without it
    assert latency.best_usable([_row(1, 0.69, 0.8, 0.44)], reference_iou=0.5) is None  # 0.88×


def test_a_stored_run_without_a_reference_iou_gets_a_null_best_and_says_why():
    stored = {"rows": [_row(40, 0.69, 0.86, 0.0)], "best_plan_latency_ratio": 0.86,
              "training": {"distill_steps": 0, "epochs_per_trial": 0.25, "train_tiles": 16, "batch_size": 8}}
    d = latency.reapply(stored)
    assert d["best_plan_latency_ratio"] is None and d["best_plan_iou_ratio"] is None
    assert "rerun" in d["best_plan_text"]
    line = latency.usable_line(d)
    assert "1 optimizer step(s)" in line and "1 of 1 score IoU 0.000" in line
    assert latency.steps_of(stored["training"]) == 1  # ceil(0.25 × 16 // 8)
    assert latency.steps_of(latency.SEARCH_TRAINING) == 16  # the fixed budget: 2 epochs × 8 batches
