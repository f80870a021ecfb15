"""The one-shot search (issue 17): plans scored in a supernet, the front confirmed by training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import cubesearch.search as searching
from cubesearch.errors import CubesearchError
from cubesearch.exporting import export
from cubesearch.search import SupernetEvaluator, oneshot
from cubesearch.search.record import TrialCounts

TINY = str(Path(__file__).parent / "assets" / "tiny_seg.py")
FAST = dict(input_size=(3, 64, 64), tile_size=32, train_tiles=16, val_tiles=8, batch_size=8,
            epochs_per_trial=0.25, progress=False, space="shared", strategy="oneshot",
            supernet_epochs=0.25, distill_steps=2)


def run(out: Path, budget: str = "90%", trials: int = 3, proxy: int = 8, **kw):
    return searching.search(TINY, budget, out=str(out), trials=trials, proxy_trials=proxy,
                            **{**FAST, **kw})


# --- which plans are confirmed -------------------------------------------------------------------


def _scored(number: int, iou: float, gflops: float, plan: str | None = None):
    return create_trial(state=TrialState.COMPLETE, values=[iou, gflops],
                        params={"x": float(number)}, distributions={"x": FloatDistribution(0, 100)},
                        user_attrs={"iou": iou, "gflops": gflops, "scored": True,
                                    "plan": {"p": plan or str(number)}})


def test_cover_front_takes_the_front_by_hypervolume_then_the_next_layer():
    front = [_scored(0, 0.50, 10.0), _scored(1, 0.40, 5.0), _scored(2, 0.20, 2.0)]
    behind = [_scored(3, 0.30, 8.0), _scored(4, 0.10, 9.0)]
    twin = [_scored(5, 0.50, 10.0, plan="0")]  # the same plan as trial 0, scored again
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trials([*front, *behind, *twin])  # numbered 0…5 as created
    trials = study.trials
    ref = np.array([0.0, 11.0])  # IoU 0, 1.1 × the largest cost
    # the first pick is the point with the largest hypervolume on its own
    alone = {t.number: (ref[1] - t.user_attrs["gflops"]) * t.user_attrs["iou"] for t in trials[:3]}
    picks = oneshot.cover_front(trials, 1, ("iou", "gflops"))
    assert [t.number for t in picks] == [max(alone, key=alone.get)]
    three = oneshot.cover_front(trials, 3, ("iou", "gflops"))
    assert {t.number for t in three} == {0, 1, 2}  # the whole first front before anything behind
    four = oneshot.cover_front(trials, 4, ("iou", "gflops"))
    assert four[3].number == 3  # then the front of what is left: trial 3 (trial 4 is behind it)
    assert [t.number for t in oneshot.cover_front(trials, 10, ("iou", "gflops"))] == [
        *[t.number for t in three], 3, 4]  # trial 5 repeats trial 0's plan: never twice
    assert oneshot.cover_front(trials, 0, ("iou", "gflops")) == []


def test_an_earlier_phases_rejections_do_not_end_the_next_phase():
    # scoring 150 plans rejected 251 over budget; confirming 5 has trained 1 so far
    counts = TrialCounts(trained=1, rejected=251, failed=0, scored=150)
    confirming = oneshot.Phase("confirming", 5, rejected_before=251)
    assert not counts.finished(5, confirming) and counts.tight_budget_note(5, confirming) is None
    assert counts.finished(5, oneshot.Phase("confirming", 5))  # counted from the start: gave up
    scoring = oneshot.Phase("scoring", 150, scored=True)
    assert counts.finished(150, scoring) and counts.done(scoring) == 150
    stuck = TrialCounts(trained=1, rejected=251 + 125, failed=0, scored=150)
    assert "with 1 of 5 trials trained" in stuck.tight_budget_note(5, confirming)


# --- the search end to end -----------------------------------------------------------------------


def test_oneshot_search_scores_confirms_and_exports(tmp_path, monkeypatch):
    scored_plans: list[dict] = []
    real = SupernetEvaluator.evaluate

    def counting(self, ctx, trial):
        scored_plans.append(dict(trial.plan.sites))
        return real(self, ctx, trial)

    monkeypatch.setattr(SupernetEvaluator, "evaluate", counting)
    result = run(tmp_path / "s", budget="80%", trials=3, proxy=8)
    study = result.study
    counts = TrialCounts.of(study)
    assert counts.scored == 8 and counts.trained == 3 and counts.failed == 0
    assert result.n_complete == 3 and result.n_scored == 8
    # over-budget plans are never scored: every plan the supernet saw is within the budget
    budget = result.budget_gflops * 1e9
    cost = searching.build_context(searching.SearchSettings(model=TINY, budget="80%", **{
        k: v for k, v in FAST.items() if k != "progress"})).cost
    assert len(scored_plans) == 8  # one score per scored plan, none for a rejected one
    for plan in scored_plans:
        assert cost.flops(plan) <= budget or plan == {}  # the unconverted reference is exempt
    # each confirmed trial trains a scored plan and carries its supernet score
    by_number = {t.number: t for t in study.trials}
    confirmed = [t for t in study.trials if "confirms" in t.user_attrs]
    assert len(confirmed) == 3
    for t in confirmed:
        source = by_number[t.user_attrs["confirms"]]
        assert source.user_attrs["scored"] and not t.user_attrs.get("scored")
        assert t.user_attrs["plan"] == source.user_attrs["plan"]
        assert t.user_attrs["supernet_iou"] == pytest.approx(source.user_attrs["iou"])
        assert Path(t.user_attrs["checkpoint"], "model.safetensors").is_file()
    assert {t.user_attrs.get("reference") for t in confirmed} >= {"baseline", "fullcube"}
    # the result's points and front are the confirmed trials; the scored ones are the cloud
    rejected = {t.number for t in study.trials if t.user_attrs.get("infeasible")}
    trained = [p for p in result.points if p.trial not in rejected]
    assert {p.trial for p in trained} == {t.number for t in confirmed}
    assert all("supernet_iou" in p.extra for p in trained)
    assert len(result.scored) == 8
    summary = json.loads((tmp_path / "s" / "search.json").read_text())
    assert summary["plans_scored"] == 8 and summary["trials_complete"] == 3
    exported = export(tmp_path / "s", out=tmp_path / "x", formats=("safetensors",), progress=False)
    assert exported.models and {m["trial"] for m in exported.models} <= {t.number for t in confirmed}
    # the same command again finds everything done: nothing scored or trained twice
    scored_plans.clear()
    again = run(tmp_path / "s", budget="80%", trials=3, proxy=8)
    assert scored_plans == [] and TrialCounts.of(again.study) == counts


def test_oneshot_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(CubesearchError, match="--proxy-trials"):
        run(tmp_path / "a", proxy=0)
    with pytest.raises(CubesearchError, match="below the cheapest plan"):
        run(tmp_path / "b", budget="1MFLOPs")
    with pytest.raises(CubesearchError, match="--evaluator .*other evaluators run with --strategy trials"):
        run(tmp_path / "c", evaluator=str(Path(__file__).parent.parent / "examples" / "evaluator.py")
            + ":evaluate")
    with pytest.raises(CubesearchError, match="--supernet-workers 2: .*--backend ray"):
        run(tmp_path / "d", supernet_workers=2)
    with pytest.raises(CubesearchError, match="--strategy 'many': choose auto, trials, oneshot, halving"):
        run(tmp_path / "e", strategy="many")
    assert not (tmp_path / "b" / "baselines").exists()


def test_a_study_scored_in_another_supernet_is_refused(tmp_path):
    settings = searching.SearchSettings(model=TINY, budget="90%", out=str(tmp_path), **{
        k: v for k, v in FAST.items() if k != "progress"})
    ctx = searching.build_context(settings)
    study = optuna.create_study(directions=["maximize", "minimize"])
    first = SupernetEvaluator(epochs=0.25)
    oneshot.check_supernet(study, ctx, first)  # records the supernet
    oneshot.check_supernet(study, ctx, SupernetEvaluator(epochs=1.0))  # nothing scored yet: fine
    study.add_trial(_scored(0, 0.5, 1.0))
    with pytest.raises(CubesearchError, match="scored its plans in supernet .* other settings"):
        oneshot.check_supernet(study, ctx, SupernetEvaluator(epochs=1.0))


def test_the_cli_prints_scores_next_to_confirmed_ious(tmp_path):
    from typer.testing import CliRunner

    from cubesearch.cli import app

    res = CliRunner().invoke(app, [
        "search", TINY, "--budget", "90%", "--space", "shared", "--strategy", "oneshot",
        "--trials", "2", "--proxy-trials", "4", "--supernet-epochs", "0.25", "--distill-steps", "2",
        "--input-size", "3x64x64", "--tile-size", "32", "--train-tiles", "16", "--val-tiles", "8",
        "--epochs-per-trial", "0.25", "-o", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "score" in res.output and "4 plans scored in the supernet" in res.output


# --- kill -9 in each phase -------------------------------------------------------------------------


def _cli(out: Path, proxy: int) -> list[str]:
    return [sys.executable, "-m", "cubesearch", "search", TINY, "--budget", "90%", "--space",
            "shared", "--strategy", "oneshot", "--trials", "2", "--proxy-trials", str(proxy),
            "--supernet-epochs", "6", "--distill-steps", "2", "--input-size", "3x64x64",
            "--tile-size", "32", "--train-tiles", "48", "--val-tiles", "8",
            "--epochs-per-trial", "0.25", "--out", str(out), "--json"]


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if ready():
                break
        except Exception:  # the database is being created, or briefly locked
            pass
        time.sleep(0.1)
    assert proc.poll() is None, f"the search ended before it was killed: {proc.communicate()[1]!r}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_oneshot_resumes_after_kill_9_in_training_and_in_scoring(tmp_path):
    out, proxy = tmp_path / "s", 40
    env = {**os.environ, "CUBESEARCH_HEARTBEAT": "1,2", "CUBESEARCH_NO_PROGRESS": "1"}
    storage = f"sqlite:///{out / 'study.db'}"

    def epochs_done() -> bool:  # the supernet's second epoch is saved: kill it mid-training
        states = list((out / "supernet").glob("*/train/state.json"))
        return bool(states) and json.loads(states[0].read_text())["stage"] == "epoch-2"

    _kill_when(subprocess.Popen(_cli(out, proxy), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE), epochs_done)

    def some_scored() -> bool:
        study = optuna.load_study(study_name=None, storage=storage)
        return TrialCounts.of(study).scored >= 5

    proc = subprocess.Popen(_cli(out, proxy), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _kill_when(proc, some_scored)
    assert "supernet: resuming" in proc.stderr.read()  # from its last epoch, not from scratch
    kept = {t.number for t in optuna.load_study(study_name=None, storage=storage).trials
            if t.state == TrialState.COMPLETE and t.user_attrs.get("scored")}
    time.sleep(2.5)  # past the heartbeat grace period
    res = subprocess.run(_cli(out, proxy), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    study = optuna.load_study(study_name=None, storage=storage)
    counts = TrialCounts.of(study)
    assert counts.scored == proxy and counts.trained == 2  # nothing scored twice, all confirmed
    final = {t.number for t in study.trials if t.state == TrialState.COMPLETE}
    assert kept <= final
    assert json.loads(res.stdout)["plans_scored"] == proxy
