"""Evaluators: the user's own training code scores the plans; its failures are failed trials."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from optuna.trial import TrialState

import cubesearch
from cubesearch.core.errors import CubesearchError
from cubesearch.exporting.export import open_study_source
from cubesearch.search import SearchSettings, TrialOutcome, evaluators

ROOT = Path(__file__).parent.parent
TINY = str(Path(__file__).parent / "assets" / "tiny_seg.py")
EXAMPLE = f"{ROOT / 'examples' / 'evaluator.py'}:evaluate"
FAST = dict(input_size=(3, 64, 64), tile_size=32, train_tiles=16, val_tiles=8, batch_size=8,
            epochs_per_trial=1.0, distill_steps=5, progress=False, space="shared", budget="100%",
            strategy="trials")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """One --out for the module: its studies share the trained baseline."""
    return tmp_path_factory.mktemp("evaluators") / "search"


def run(out, study, trials=2, **kw):
    opts = {**FAST, "out": str(out), "study": study, "trials": trials, **kw}
    return cubesearch.search(TINY, opts.pop("budget"), **opts)


def test_a_user_evaluator_file_scores_the_plans(out):
    result = run(out, "file", evaluator=EXAMPLE)
    assert result.n_complete == 2 and result.n_failed == 0
    assert result.study.user_attrs["settings"]["evaluator"] == EXAMPLE
    for t in result.study.get_trials(states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        assert 0.0 <= a["iou"] <= 1.0 and "loss" in a  # what the function returned is recorded
        assert a["gflops"] == pytest.approx(a["gflops_estimate"], rel=1e-3)  # fvcore measured it
        metrics = json.loads(Path(a["checkpoint"], "metrics.json").read_text())
        assert metrics["iou"] == a["iou"] and Path(a["checkpoint"], "model.safetensors").exists()


def test_a_user_function_gets_the_warm_started_model(out):
    seen = []

    def score(model, trial):
        seen.append((trial.number, trial.baseline_dir, len(trial.plan.sites)))
        return {"iou": 0.5 + trial.number / 100, "f1": 0.25}

    result = run(out, "function", evaluator=score)
    assert [n for n, *_ in seen] == [0, 1]  # the two references: unconverted, then FullCube
    assert all(baseline is not None for _, baseline, _ in seen) and seen[0][2] == 0 < seen[1][2]
    assert sorted(p.iou for p in result.points) == [0.5, 0.51]
    assert all(p.extra["f1"] == 0.25 for p in result.points)


def test_an_evaluator_that_raises_or_gives_no_iou_fails_the_trial(out):
    answers = [RuntimeError("data loader broke"), {"miou": 0.5}, {"iou": float("nan")}]

    def bad(model, trial):
        answer = answers[trial.number]
        if isinstance(answer, Exception):
            raise answer
        return answer

    with pytest.raises(CubesearchError, match="every trial failed; the first: trial 0: RuntimeError: "
                                              "data loader broke"):
        run(out, "bad", trials=1, evaluator=bad)
    reasons = [t.user_attrs["fail_reason"] for t in open_study_source(out, "bad").trials]
    assert reasons == ["RuntimeError: data loader broke",
                       "TrialError: the evaluator returned dict without an 'iou' (it must return a "
                       "dict like {'iou': 0.71, ...})",
                       "TrialError: the evaluator's iou is not finite: nan"]


def test_evaluator_specs_are_checked_before_any_work(tmp_path):
    out = tmp_path / "search"
    with pytest.raises(CubesearchError, match="no such file"):
        run(out, "x", evaluator="missing.py:fn")
    with pytest.raises(CubesearchError, match="unknown evaluator 'examples/evaluator.py' .choose from "
                                              "finetune, .*or give path/to/eval.py:fn"):
        run(out, "x", evaluator="examples/evaluator.py")
    with pytest.raises(CubesearchError, match="give a file and a function"):
        run(out, "x", evaluator="examples/evaluator.txt:fn")
    with pytest.raises(CubesearchError, match="has no function 'nope'"):
        run(out, "x", evaluator=f"{ROOT / 'examples' / 'evaluator.py'}:nope")
    assert not out.exists()


def test_a_file_evaluator_pickles_by_its_spec():
    ev = evaluators.UserEvaluator(EXAMPLE)
    copy = pickle.loads(pickle.dumps(ev))
    assert copy.name == EXAMPLE and callable(copy._fn)


def test_a_trial_outcome_round_trips_through_user_attrs_and_a_ray_report():
    outcome = TrialOutcome(iou=0.5, costs={"gflops": 1.5, "params": 10}, seconds=2.0, checkpoint="/x",
                           metrics={"f1": 0.6})
    assert TrialOutcome.from_user_attrs(outcome.to_user_attrs()) == outcome
    assert TrialOutcome.from_report(outcome.to_report(), ["gflops", "params"]) == outcome
    flattened = {"ok": True, "iou": 0.5, "gflops": 1.5, "params": 10, "seconds": 2.0, "checkpoint": "/x",
                 "metrics/f1": 0.6}  # as Tune may hand a result over
    assert TrialOutcome.from_report(flattened, ["gflops", "params"]) == outcome
    assert outcome.values(("iou", "params")) == (0.5, 10.0)
    with pytest.raises(CubesearchError, match="not a finite number"):
        TrialOutcome(iou=float("nan"), costs={})


# --- the retired supernet evaluator -------------------------------------------------------------


def test_the_retired_supernet_evaluator_is_one_error_saying_why():
    settings = SearchSettings(model=TINY, budget="90%", strategy="trials", evaluator="supernet")
    with pytest.raises(CubesearchError, match=r"^--evaluator supernet: the supernet evaluator was "
                       r"retired: .*0\.96x.*tau 0\.60.*use --evaluator finetune"):
        evaluators.make_evaluator(settings)
    assert "supernet" not in evaluators.EVALUATORS
