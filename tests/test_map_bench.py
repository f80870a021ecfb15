"""benchmarks/map.py's report (issue 29 item 5): hypervolumes against the hand-computed area,
their bootstrap interval, the verdicts and the pruning curve merged into the fidelity page."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cubesearch.search.pareto import ParetoPoint

_FILE = Path(__file__).parents[1] / "benchmarks" / "map.py"
_spec = importlib.util.spec_from_file_location("map_bench", _FILE)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _pt(label: str, gflops: float, iou: float) -> ParetoPoint:
    return ParetoPoint(trial=0, iou=iou, gflops=gflops, params=0, sites_replaced=0, label=label)


def test_hypervolume_is_the_area_dominated_up_to_the_reference():
    pts = [_pt("a", 1.0, 0.5), _pt("b", 2.0, 0.8), _pt("c", 3.0, 0.6)]  # c is dominated by b
    # (4 - 1) * 0.5 + (4 - 2) * (0.8 - 0.5) = 1.5 + 0.6
    assert bench.hypervolume(pts, 4.0) == pytest.approx(2.1)
    assert bench.hypervolume([_pt("x", 5.0, 0.9)], 4.0) == 0.0  # outside the reference


def test_hv_ratio_interval_resamples_each_side_and_brackets_the_ratio():
    one = [_pt("unconverted", 4.0, 0.5), _pt("a", 1.0, 0.4)]  # one plan a side: nothing to resample
    assert bench.hv_ratio_ci(one, one, 4.4) == pytest.approx([1.0, 1.0])
    same = [_pt("unconverted", 4.0, 0.5), _pt("a", 1.0, 0.4), _pt("b", 2.0, 0.45)]
    lo, hi = bench.hv_ratio_ci(same, same, 4.4)  # the sides resampled independently
    assert lo < 1.0 < hi
    better = [_pt("unconverted", 4.0, 0.5), _pt("a", 1.0, 0.45), _pt("b", 2.0, 0.5)]
    lo, hi = bench.hv_ratio_ci(better, same, 4.4)
    ratio = bench.hypervolume(better, 4.4) / bench.hypervolume(same, 4.4)
    assert lo <= ratio <= hi and ratio > 1.0


def test_verdict_needs_the_interval_to_clear_the_target_and_calls_ties():
    assert bench.verdict(0.8, [0.7, 0.9], 0.65, None) == "met"
    assert bench.verdict(0.3, [0.1, 0.5], 0.65, None) == "missed"
    assert bench.verdict(0.6, [0.4, 0.8], 0.65, None) == "below the target, inside the interval"
    assert bench.verdict(1.02, [0.9, 1.1], 1.05, 1.0) == (
        "below the target, inside the interval; tie with pruning (interval holds 1)")
    assert bench.verdict(0.8, [0.7, 0.9], 1.05, 1.0) == "missed; below pruning"
    assert bench.verdict(None, None, 1.2, None) == "not run"


def test_the_pruning_curve_section_replaces_itself_in_the_fidelity_page(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    (tmp_path / "fid.json").write_text(json.dumps({"model": "m"}))
    (tmp_path / "fid.md").write_text("# page\n\ntext\n")
    curve = {"recipe": "r", "tiles": "t", "points": [
        {"id": "pruning-0.5", "kept_fraction": 0.5, "kept_after_rounding": [0.5, 0.75], "gflops": 1.25,
         "iou": 0.3,
         "iou_by_seed": {"0": 0.2, "1": 0.4}, "curves": {"0": [0.0, 0.2], "1": [0.1, 0.4]}}]}
    bench.add_pruning_curve("fid", curve)
    bench.add_pruning_curve("fid", curve)  # twice: one section
    md = (tmp_path / "fid.md").read_text()
    assert md.startswith("# page\n\ntext\n\n## Channel pruning curve")
    assert md.count("## Channel pruning curve") == 1
    assert "| pruning-0.5 | 0.5 | 0.50–0.75 | 1.250 | 0.300 | 0.200 / 0.400 | 0.00 0.20; 0.10 0.40 |" in md
    assert json.loads((tmp_path / "fid.json").read_text()) == {"model": "m", "pruning_curve": curve}
    assert "No run ended at val IoU 0." in md
    curve["points"][0]["curves"]["1"] = [0.1, 0.3, 0.0, 0.0]
    assert bench.collapse_line(curve).startswith(
        "Runs that ended at val IoU 0 after scoring above it: pruning-0.5 seed 1 (from epoch 3)")


def test_effective_kept_rounds_each_conv_to_a_multiple_of_8():
    data = {"sites": [{"name": "a", "out_channels": 16}, {"name": "b", "out_channels": 64}]}
    # 0.875 · 16 = 14 → 16, held below C_out → 8 (0.5); 0.875 · 64 = 56 (0.875)
    assert bench.effective_kept({"a": 0.875, "b": 0.875}, data) == [0.5, 0.875]
    assert bench.effective_kept({"b": 0.25}, data) == [0.25, 0.25]
