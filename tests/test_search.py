"""The local Optuna search on a tiny model: budget, infeasible plans, failures, resume, Pareto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import cubesearch.search as searching
from cubesearch.core.errors import CubesearchError
from cubesearch.search.evaluators import finetune
from cubesearch.search.pareto import non_dominated

TINY = str(Path(__file__).parent / "assets" / "tiny_seg.py")
FAST = dict(input_size=(3, 64, 64), tile_size=32, train_tiles=16, val_tiles=8, batch_size=8,
            epochs_per_trial=1.0, progress=False, strategy="trials")


def run(tmp_path, budget="90%", trials=4, **kw):
    opts = {**FAST, "out": str(tmp_path / "search"), "space": "shared", "trials": trials, **kw}
    return searching.search(TINY, budget, **opts)


def load_study(tmp_path):
    return optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'search' / 'study.db'}")


def test_budget_below_cheapest_plan_fails_before_training(tmp_path):
    with pytest.raises(CubesearchError, match=r"below the cheapest plan in space 'shared': [0-9.]+ GFLOPs"):
        run(tmp_path, budget="1MFLOPs")
    assert not (tmp_path / "search" / "baselines").exists()


def test_malformed_budget_is_an_error(tmp_path):
    with pytest.raises(CubesearchError, match="budget 'lots' is not understood"):
        run(tmp_path, budget="lots")


def test_search_records_front_references_and_rejects_infeasible_without_training(tmp_path,
                                                                                monkeypatch):
    trained: list[int] = []
    real = finetune.evaluate_plan

    def counting(ctx, sites_cfg, number, **kw):
        trained.append(number)
        return real(ctx, sites_cfg, number, **kw)

    monkeypatch.setattr(finetune, "evaluate_plan", counting)
    result = run(tmp_path, budget="80%", trials=8, sampler="random")
    study = result.study
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    # --trials counts trained trials; plans over budget are extra, free, and counted apart
    assert result.n_complete == 8 and len(trained) == 8
    assert result.n_rejected == len(complete) - 8
    assert sum(bool(t.user_attrs.get("infeasible")) for t in complete) == result.n_rejected
    refs = {t.user_attrs.get("reference"): t for t in complete if t.user_attrs.get("reference")}
    assert set(refs) == {"baseline", "fullcube"}
    assert refs["baseline"].user_attrs["sites_replaced"] == 0
    budget = result.budget_gflops
    for t in complete:
        a = t.user_attrs
        over = a["gflops_estimate"] > budget
        assert a["feasible"] == (not over)
        if over and not a.get("reference"):
            assert a["infeasible"] and t.number not in trained and "checkpoint" not in a
        else:
            assert t.number in trained
            assert Path(a["checkpoint"], "model.safetensors").exists()
            # fvcore confirms the cost model
            assert a["gflops"] == pytest.approx(a["gflops_estimate"], rel=1e-3)
    # the front: feasible, non-dominated, and the same as recomputing it from all points
    assert result.front == non_dominated(result.points)
    assert all(p.feasible and p.gflops <= budget for p in result.front)
    summary = json.loads((tmp_path / "search" / "search.json").read_text())
    assert [p["trial"] for p in summary["pareto"]] == [p.trial for p in result.front]
    assert (tmp_path / "search" / "pareto.png").exists()
    # trials fine-tune the baseline's weights at a quarter of its peak learning rate, and train
    # their new blocks at the full one
    (baseline,) = (tmp_path / "search" / "baselines").iterdir()
    assert json.loads((baseline / "metrics.json").read_text())["lr"] == 2e-3
    for t in complete:
        if "checkpoint" in t.user_attrs:
            metrics = json.loads(Path(t.user_attrs["checkpoint"], "metrics.json").read_text())
            assert metrics["lr"] == pytest.approx(2e-3 / 4)
            assert metrics["new_lr"] == (2e-3 if t.user_attrs["sites_replaced"] else None)


def test_trial_learning_rate():
    settings = searching.SearchSettings(model=TINY, budget="50%", lr=1e-3)
    assert settings.fine_tune_lr() == pytest.approx(2.5e-4) and settings.fine_tune_lr(False) == 1e-3
    settings = searching.SearchSettings(model=TINY, budget="50%", lr=1e-3, trial_lr=3e-4)
    assert settings.fine_tune_lr() == settings.fine_tune_lr(False) == 3e-4
    with pytest.raises(ValueError, match="greater than 0"):
        searching.SearchSettings(model=TINY, budget="50%", trial_lr=0)


def test_resume_keeps_trials_and_baseline(tmp_path, monkeypatch):
    first = {t.number for t in run(tmp_path, trials=3).study.trials}
    (folder,) = (tmp_path / "search" / "baselines").iterdir()
    baseline = folder / "model.safetensors"
    stamp = baseline.stat().st_mtime_ns
    calls = []
    import cubesearch.training as training

    real_train = training.train
    monkeypatch.setattr(training, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    result = run(tmp_path, trials=5)
    new = [t for t in result.study.get_trials(states=(TrialState.COMPLETE,)) if t.number not in first]
    new_trained = [t for t in new if not t.user_attrs.get("infeasible")]
    assert result.n_complete == 5 and len(new_trained) == 2
    # only the new feasible trials trained; the baseline was not retrained
    assert len(calls) == sum("checkpoint" in t.user_attrs for t in new)
    assert baseline.stat().st_mtime_ns == stamp
    numbers = [t.number for t in result.study.get_trials(states=(TrialState.COMPLETE,))]
    assert numbers == sorted(set(numbers))


def test_studies_sharing_an_out_folder_keep_their_own_trials_and_baselines(tmp_path):
    a = run(tmp_path, trials=3, study="a")
    b = run(tmp_path, trials=3, study="b", lr=1e-3)  # other training settings: its own baseline
    c = run(tmp_path, trials=3, study="c")  # same training settings as "a": shares its baseline
    baselines = sorted((tmp_path / "search" / "baselines").iterdir())
    assert len(baselines) == 2
    folders = {r.study.study_name: {p.checkpoint for p in r.points if p.checkpoint} for r in (a, b, c)}
    assert all(Path(f).parent.name == name for name, fs in folders.items() for f in fs)
    assert not set.intersection(*folders.values())


def test_resume_with_other_settings_is_refused(tmp_path):
    run(tmp_path, trials=2)
    with pytest.raises(CubesearchError, match=r"started with other settings \(budget: '90%' → '70%'\)"):
        run(tmp_path, budget="70%", trials=3)


def test_failed_trials_are_recorded_and_search_goes_on(tmp_path, monkeypatch):
    real = finetune.evaluate_plan

    def flaky(ctx, sites_cfg, number, **kw):
        if number == 2:
            raise FloatingPointError("loss is NaN")
        return real(ctx, sites_cfg, number, **kw)

    monkeypatch.setattr(finetune, "evaluate_plan", flaky)
    result = run(tmp_path, budget="100%", trials=4)
    failed = result.study.get_trials(states=(TrialState.FAIL,))
    assert [t.number for t in failed] == [2]
    assert failed[0].user_attrs["fail_reason"] == "FloatingPointError: loss is NaN"
    assert result.n_complete == 4 and result.n_failed == 1


def test_every_trial_failing_stops_with_the_first_error(tmp_path, monkeypatch):
    def broken(ctx, sites_cfg, number, **kw):
        raise RuntimeError(f"bug in trial {number}")

    monkeypatch.setattr(finetune, "evaluate_plan", broken)
    first = r"every trial failed; the first: trial 0: RuntimeError: bug in trial 0"
    with pytest.raises(CubesearchError, match=first):
        run(tmp_path, budget="100%", trials=5)
    assert len(load_study(tmp_path).trials) == 3  # stopped after three failures in a row


def test_kill_9_loses_no_completed_trial(tmp_path):
    out = tmp_path / "search"
    # Enough trials, and trials long enough, that the kill lands while the search is running.
    trials = 10
    cmd = [sys.executable, "-m", "cubesearch", "search", TINY, "--budget", "100%", "--space",
           "shared", "--trials", str(trials), "--strategy", "trials", "--out", str(out),
           "--input-size", "3x64x64",
           "--tile-size", "32", "--train-tiles", "48", "--val-tiles", "8", "--json"]
    env = {**os.environ, "CUBESEARCH_HEARTBEAT": "1,2", "CUBESEARCH_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    storage = f"sqlite:///{out / 'study.db'}"
    deadline = time.time() + 240
    done = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            study = optuna.load_study(study_name=None, storage=storage)
            done = len(study.get_trials(states=(TrialState.COMPLETE,)))
        except Exception:  # the database is still being created, or briefly locked
            continue
        if done >= 2:
            break
    assert proc.poll() is None, f"the search ended before it was killed: {proc.communicate()[1]!r}"
    assert 2 <= done < trials, "the search did not get going"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = optuna.load_study(study_name=None, storage=storage)
    kept = {t.number for t in killed.get_trials(states=(TrialState.COMPLETE,))}
    # Wherever the kill landed, also leave the worst case: a trial Optuna created but whose first
    # heartbeat never came (Optuna's stale check skips such trials; resume must fail and retry it).
    killed._storage.create_new_trial(killed._study_id)
    time.sleep(2.5)  # past the heartbeat grace period: the interrupted trials are stale
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["trials_complete"] == trials
    study = optuna.load_study(study_name=None, storage=storage)
    final = {t.number for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert kept <= final
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_resume_fails_a_trial_killed_before_its_first_heartbeat(tmp_path, monkeypatch):
    from cubesearch.search.study import open_study

    monkeypatch.setenv("CUBESEARCH_HEARTBEAT", "1,1")
    settings = searching.SearchSettings(model=TINY, budget="100%", out=str(tmp_path / "s"))
    study = open_study(settings)
    study._storage.create_new_trial(study._study_id)  # RUNNING, no heartbeat: the process died
    assert open_study(settings).get_trials()[0].state == TrialState.RUNNING  # within the grace
    time.sleep(1.2)
    trials = open_study(settings).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # failed, retried


def test_study_names_cannot_leave_out_and_bad_options_are_named(tmp_path, capsys):
    from cubesearch.cli import main

    for name in ("../../escaped", "a/b", "..", ""):
        with pytest.raises(CubesearchError, match="--study"):
            run(tmp_path, study=name)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "search").exists()
    assert main(["search", TINY, "--budget", "50%", "--trials", "0", "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "'--trials'" in err and "greater than or equal to 1" in err
    (tmp_path / "file").write_text("x")
    assert main(["search", TINY, "--budget", "50%", "-o", str(tmp_path / "file")]) == 1
    err = capsys.readouterr().err
    assert "--out" in err and "is a file" in err and "[Errno" not in err


def test_budget_above_every_plan_is_a_warning(tmp_path):
    from cubesearch.search.context import budget_warning, build_context

    settings = searching.SearchSettings(model=TINY, budget="150%", out=str(tmp_path), space="shared",
                                        input_size=(3, 64, 64))
    assert "every plan is within budget" in budget_warning(build_context(settings))
    settings = settings.model_copy(update={"budget": "60%"})
    assert budget_warning(build_context(settings)) is None


def test_checkpoints_are_re_rooted_at_the_study_folder(tmp_path, monkeypatch):
    from cubesearch.search.record import resolve_checkpoint, stored_checkpoint

    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert stored_checkpoint(Path("out/trials/s/trial_0001"), "out") == str(out / "trials/s/trial_0001")
    moved = tmp_path / "moved"
    folder = moved / "trials" / "s" / "trial_0001"
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text("{}")
    assert resolve_checkpoint("trials/s/trial_0001", moved) == str(folder)  # relative to OUT
    # older studies recorded the path relative to where the search ran, or absolute
    assert resolve_checkpoint("runs/x/trials/s/trial_0001", moved, "runs/x") == str(folder)
    assert resolve_checkpoint(str(out / "trials/s/trial_0001"), moved) == str(folder)


def test_trial_counts_count_trained_trials_and_give_up_on_a_tight_budget():
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    study = optuna.create_study(directions=["maximize", "minimize"])

    def add(state, **attrs):
        values = [0.5, 1.0] if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(state=state, values=values, user_attrs=attrs,
                                     params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}))

    add(TrialState.COMPLETE)  # trained
    add(TrialState.COMPLETE, infeasible=True)  # rejected over budget, not trained
    add(TrialState.COMPLETE, infeasible=True)
    add(TrialState.FAIL)
    counts = searching.TrialCounts.of(study)
    assert (counts.trained, counts.rejected, counts.failed) == (1, 2, 1)
    assert counts.finished(1) and not counts.finished(2)
    assert counts.tight_budget_note(2) is None
    cap = searching.MAX_REJECTIONS_PER_TRIAL * 2
    tight = searching.TrialCounts(trained=1, rejected=cap, failed=0)
    assert tight.finished(2)
    assert f"stopped after {cap} plans over budget with 1 of 2 trials trained" in tight.tight_budget_note(2)
    assert searching.TrialCounts(0, 0, 3).all_failed() and not searching.TrialCounts(0, 1, 3).all_failed()


def test_the_baseline_does_not_depend_on_what_ran_before(tmp_path):
    from safetensors.torch import load_file

    weights = []
    for name, seed in (("a", 1), ("b", 2)):  # a different global RNG state before each search
        torch.manual_seed(seed)
        run(tmp_path / name, trials=1)
        (folder,) = (tmp_path / name / "search" / "baselines").iterdir()
        weights.append(load_file(folder / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_model_kwargs_reach_the_built_model_and_every_saved_plan(tmp_path):
    from cubesearch.plan.checkpoint import load
    from cubesearch.search.settings import BASELINE_IDENTITY

    spec = f"{TINY}:TinySeg"  # the class takes width (build_model does not)
    # 16 wide: the decoder's convs take 32 channels, q = 8 (4 wide they would not be searched)
    result = searching.search(spec, "100%", model_kwargs={"width": 16}, trials=2,
                              **{**FAST, "out": str(tmp_path / "search"), "space": "shared"})
    (baseline,) = (tmp_path / "search" / "baselines").iterdir()
    folders = [baseline] + [Path(p.checkpoint) for p in result.points if p.checkpoint]
    assert len(folders) >= 3
    for folder in folders:  # the plan records it, and the checkpoint rebuilds the 4-wide model
        assert json.loads((folder / "plan.json").read_text())["model_kwargs"] == {
            "num_classes": 1, "in_channels": 3, "width": 16}
        assert load(folder).head.in_channels == 16
    # FLOPs are priced on the 16-wide model: 3×3 convs 3→16, 16→32 at 64², 32→32 at 32², then
    # 32→32, 32→16 at 64² again, the head 16→1 (one multiply-add counts one; BatchNorm adds the rest)
    hw = 64 * 64
    convs = 9 * (3 * 16 + 16 * 32 + 32 * 32 // 4 + 32 * 32 + 32 * 16) * hw + 16 * hw
    assert result.baseline.gflops * 1e9 == pytest.approx(convs, rel=0.05)
    with pytest.raises(CubesearchError, match=r"model_kwargs: \{'width': 16\} → \{'width': 8\}"):
        searching.search(spec, "100%", model_kwargs={"width": 8}, trials=3,
                         **{**FAST, "out": str(tmp_path / "search"), "space": "shared"})
    # without any, a baseline keeps the key it had before the option existed
    plain = searching.SearchSettings(model=TINY, budget="100%")
    assert "model_kwargs" not in plain.identity(BASELINE_IDENTITY)


@pytest.mark.parametrize("arg, message", [
    ("width", "--model-arg 'width': expected KEY=VALUE"),
    ("num_classes=3", "--model-arg num_classes=3: the search sets num_classes itself; use --classes"),
    ("encoder_weights=imagenet", '--model-arg encoder_weights="imagenet": refused'),
    ('width={"a": 1}', "--model-arg width={\"a\": 1}: give a plain JSON value"),
])
def test_a_bad_model_arg_is_one_error_line_naming_the_option(tmp_path, capsys, arg, message):
    from cubesearch.cli import main

    out = tmp_path / "o"
    assert main(["search", TINY, "--budget", "50%", "--model-arg", arg, "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}")
    assert not out.exists()
