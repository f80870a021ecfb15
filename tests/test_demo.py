"""`cubesearch demo`: the block's cost table against its formulas, and the whole job end to end
(search, export, plot) on a tiny model, resumed on a second run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TINY = str(Path(__file__).parent / "assets" / "tiny_seg.py")


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUBESEARCH_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "cubesearch", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_cost_table_matches_the_conv_formulas():
    done = cli("demo", "--cost-only", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    conv, cube = json.loads(done.stdout)["cost_table"]
    c, hw = 96, 128 * 128
    assert conv["params"] == conv["params_formula"] == c * c * 9 + c
    assert conv["conv_gmacs_formula"] * 1e9 == c * c * 9 * hw
    assert abs(conv["gflops_fvcore"] - conv["conv_gmacs_formula"]) < 1e-9  # a plain conv
    assert cube["params"] == cube["params_formula"]
    # the lattice conv and the grouped fusion are what the block pays instead of C·C·9·H·W
    assert conv["params"] / cube["params"] > 5
    assert conv["conv_gmacs_formula"] / cube["conv_gmacs_formula"] > 5


def test_demo_searches_exports_and_resumes(tmp_path):
    args = ("demo", "--model", TINY, "--trials", "4", "--train-tiles", "16", "--tile-size", "32",
            "--baseline-epochs", "1", "--rungs", "0.5,1", "--distill-steps", "2",
            "--out", str(tmp_path), "--json")
    done = cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    payload = json.loads(done.stdout)
    # the default strategy: 4 plans on rung 0, 4 // 3 = 1 promoted plus the unconverted
    # reference, which, trained on alike, is the paired baseline of every exported model
    complete = payload["search"]["trials_complete"]
    assert complete in (1, 2)
    paired = payload["search"]["baseline"]["iou"]
    assert "final IoU vs the paired baseline" in done.stderr
    exported = tmp_path / "exported"
    for name in ("pareto.png", "pareto.html", "pareto.csv", "pareto.md"):
        assert (exported / name).stat().st_size > 0
    models = payload["export"]["models"]
    assert models and all(Path(m["folder"]).is_dir() for m in models)
    assert all(m["onnx_max_abs_error"] <= 1e-4 for m in models)
    for m in models:  # what the user gets, against the like-for-like baseline
        assert m["final_iou"] == m["iou"] and m["paired_baseline_iou"] == paired
        assert m["delta_iou_vs_paired"] == m["final_iou"] - paired and 0 <= m["proxy_iou"] <= 1
        card = (Path(m["folder"]) / "README.md").read_text()  # the recipe as it ran: no KD by default
        assert "annealed to 0" in card and "distillation from it" not in card
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "baseline: reusing" in again.stderr and "baseline: training" not in again.stderr
    assert json.loads(again.stdout)["search"]["trials_complete"] == complete
