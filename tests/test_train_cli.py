"""`cubesearch train` and `cubesearch data preview|check` as a user runs them (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_folder_data import generic

import cubesearch

TINY = str(Path(__file__).parent / "assets" / "tiny_seg.py")
FAST = ["--input-size", "3x32x32", "--train-tiles", "16", "--val-tiles", "8", "--batch-size", "8"]


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUBESEARCH_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "cubesearch", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def assert_one_error(done: subprocess.CompletedProcess, message: str) -> None:
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], lines[-1]
    assert "Traceback" not in done.stderr


def test_train_json_metrics_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    done = cli("train", TINY, "--steps", "3", *FAST, "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    payload = json.loads(done.stdout)
    m = payload["metrics"]
    for key in ("oa", "precision", "recall", "f1", "iou", "loss"):
        assert m[key] >= 0.0 or key == "loss"
    assert m["steps"] == 3 and m["val_tiles"] == 8
    # the metrics are consistent with each other (F1 = 2·IoU/(1+IoU) for the building class)
    assert m["f1"] == pytest.approx(2 * m["iou"] / (1 + m["iou"]), abs=1e-6)
    assert Path(payload["checkpoint"]) == out
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["iou"] == m["iou"]
    model = cubesearch.load(out)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_train_prints_the_metrics_table(tmp_path):
    done = cli("train", TINY, "--steps", "2", *FAST, "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-2000:]
    for label in ("OA", "Precision", "Recall", "F1", "IoU", "Loss", "validation (8 tiles)"):
        assert label in done.stdout
    assert "2 steps" in done.stdout and "checkpoint:" in done.stdout


def test_train_on_a_folder_dataset(tmp_path):
    root = generic(tmp_path / "data", n=6, size=40)
    done = cli("train", TINY, "--data", str(root), "--val-split", "0.34", "--steps", "2",
               "--input-size", "3x32x32", "--batch-size", "2", "--out", str(tmp_path / "run"), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["metrics"]["val_tiles"] >= 2


@pytest.mark.parametrize("args, message", [
    (["no/such/model.py", "--steps", "1"], "no/such/model.py"),
    ([TINY, "--steps", "1", "--epochs", "1"], "give --epochs or --steps, not both"),
    ([TINY, "--steps", "1", "--loss", "focal"], "focal"),
    ([TINY, "--steps", "1", "--input-size", "3x32"], "input size '3x32' must be three positive numbers"),
    ([TINY, "--steps", "1", "--data", "no/such/folder"], "no/such/folder"),
    ([TINY, "--steps", "1", "--new-lr", "-1"], "--new-lr must be a positive number, not -1.0"),
])
def test_bad_train_input_is_one_error_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    done = cli("train", *args, *FAST[2:], "--out", str(out))
    assert_one_error(done, message)
    assert not out.exists()


def test_nan_loss_exits_non_zero_without_a_checkpoint(tmp_path):
    model_file = tmp_path / "nan_model.py"
    model_file.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class NaNModel(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.w = nn.Parameter(torch.ones(1))\n"
        "    def forward(self, x):\n        return x[:, :1] * self.w * float('nan')\n\n"
        "model = NaNModel()\n")
    out = tmp_path / "run"
    done = cli("train", str(model_file), "--steps", "2", *FAST, "--out", str(out))
    assert_one_error(done, "loss became nan at step 1")
    assert not out.exists()


def test_data_preview_writes_the_grid(tmp_path):
    png = tmp_path / "preview.png"
    done = cli("data", "preview", "-o", str(png), "-n", "4", "--columns", "2", "--size", "32", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout)
    # 2×2 cells, each a 32-px tile above its 32-px mask with 4-px padding everywhere
    assert (info["width"], info["height"]) == (2 * (32 + 4) + 4, 2 * (32 + 4 + 32 + 4) + 4)
    with Image.open(png) as im:
        assert im.size == (info["width"], info["height"]) and im.mode == "RGB"


def test_data_check_reports_a_folder_and_names_a_bad_mask(tmp_path):
    root = generic(tmp_path / "data", n=4, size=40)
    done = cli("data", "check", str(root), "--val-split", "0.25", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    stats = json.loads(done.stdout)
    assert stats["layout"] == "generic" and stats["train_images"] + stats["val_images"] == 4
    import numpy as np

    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(root / "masks" / "tile_2.png")
    assert_one_error(cli("data", "check", str(root), "--val-split", "0.25"), "tile_2.png")
