"""`cubesearch finetune CHECKPOINT|STUDY` as a user runs it: the final recipe's models beside their
paired baseline, and one `error:` line (nothing written) for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import cubesearch
from cubesearch.cli import main

FAST = ["--epochs", "1", "--distill-steps", "2", "--patience", "0"]


def converted_trial(result):
    return next(p for p in result.points if p.checkpoint and p.sites_replaced and p.label != "fullcube")


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_finetune_a_checkpoint_on_its_recorded_data_and_baseline(tiny_study, tmp_path, capsys):
    _, result = tiny_study
    trial = converted_trial(result)
    out = tmp_path / "ft"
    code, stdout, err = run(capsys, "finetune", trial.checkpoint, *FAST, "--batch-size", "4",
                            "-o", str(out), "--json")
    assert code == 0, err
    payload = json.loads(stdout)
    (row,) = payload["models"]
    folder = out / Path(trial.checkpoint).name
    assert row["folder"] == str(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    paired = json.loads((out / "paired.json").read_text())["metrics"]
    # the trial's own data (16 synthetic 32 px tiles), the batch size given: 4 steps an epoch
    assert metrics["input_size"] == [3, 32, 32] and metrics["train_tiles"] == 16
    assert metrics["steps"] == 4 and paired["steps"] == 4 and metrics["distill_steps"] == 2
    assert metrics["proxy_iou"] == row["proxy_iou"] == trial.iou
    assert metrics["final_iou"] == metrics["iou"] == row["final_iou"]
    assert metrics["paired_baseline_iou"] == paired["iou"] == payload["paired_baseline"]["iou"]
    assert metrics["delta_iou_vs_paired"] == pytest.approx(metrics["iou"] - paired["iou"])
    # from the baseline the trial was warm-started from (its recorded init_source)
    trial_metrics = json.loads((Path(trial.checkpoint) / "metrics.json").read_text())
    assert metrics["init_source"] == trial_metrics["init_source"] == paired["init_source"]
    assert metrics["gflops"] == pytest.approx(trial.gflops)
    cubesearch.load(folder)  # a whole, verified checkpoint


def test_finetune_a_study_selection_prints_proxy_to_final(tiny_study, tmp_path, capsys):
    study, result = tiny_study
    trial = converted_trial(result)
    out = tmp_path / "ft"
    code, stdout, err = run(capsys, "finetune", str(study), "--select", f"trial:{trial.trial}", *FAST,
                            "-o", str(out))
    assert code == 0, err
    folder = out / f"trial_{trial.trial:04d}"
    metrics = json.loads((folder / "metrics.json").read_text())
    for text in ("proxy IoU", "final IoU", "paired baseline", f"trial_{trial.trial:04d}",
                 f"{metrics['final_iou']:.4f}", f"{metrics['paired_baseline_iou']:.4f}"):
        assert text in stdout
    assert metrics["steps"] == 2 and metrics["proxy_iou"] == trial.iou  # the study's data, batch 8


@pytest.fixture
def orphan(tiny_study, tmp_path):
    """A copy of a trial checkpoint whose recorded baseline is gone."""
    _, result = tiny_study
    folder = tmp_path / "orphan"
    shutil.copytree(converted_trial(result).checkpoint, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "init_source": str(tmp_path / "gone")}))
    return folder


@pytest.mark.parametrize("case, message", [
    ("orphan", "no baseline to train from (its metrics.json records"),
    ("converted-baseline", "a converted model; give the trained, unconverted baseline"),
    ("not-a-checkpoint", "neither a checkpoint folder (plan.json) nor a search's --out folder"),
    ("select-on-checkpoint", "--select / --study choose models of a study"),
    ("unknown-trial", "trial 999 has no trained model"),
    ("bad-lr", "--lr: Input should be greater than 0"),
    ("out-is-a-file", "is a file; give a new or existing folder"),
    ("model-folder-taken", "exists and is not a cubesearch checkpoint"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(tiny_study, orphan, tmp_path, capsys, case,
                                                        message):
    study, result = tiny_study
    trial = converted_trial(result).checkpoint
    out = tmp_path / "ft"
    args = {
        "orphan": [str(orphan)],
        "converted-baseline": [trial, "--baseline", str(orphan)],
        "not-a-checkpoint": [str(tmp_path)],
        "select-on-checkpoint": [trial, "--select", "best-iou"],
        "unknown-trial": [str(study), "--select", "trial:999"],
        "bad-lr": [trial, "--lr", "-1"],
        "out-is-a-file": [trial],
        "model-folder-taken": [trial],
    }[case]
    if case == "out-is-a-file":
        out.write_text("x")
    if case == "model-folder-taken":
        (out / Path(trial).name).mkdir(parents=True)
        (out / Path(trial).name / "notes.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = run(capsys, "finetune", *args, *FAST, "-o", str(out))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and lines[-1].startswith("error: ") and message in lines[-1], err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("spelling", ["--finetune", "--finetune-epochs"])
def test_export_finetune_and_its_alias(tiny_study, tmp_path, capsys, spelling):
    study, _ = tiny_study
    code, _, err = run(capsys, "export", str(study), spelling, "-1", "-o", str(tmp_path / "e"))
    assert code == 1 and err.strip().splitlines()[-1] == "error: --finetune -1: give epochs ≥ 0 (0: " \
                                                         "export as trained)"
    assert not (tmp_path / "e").exists()
