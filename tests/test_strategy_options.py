"""Options mean what they say: under `--strategy auto` an option picks the strategy that uses it,
an option the named strategy does not use is one error line naming who uses it (from the CLI
and from `cubesearch.search(...)`, before the model loads), and `--timeout` bounds the whole
search, the baseline's training included."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import cubesearch.search as searching
from cubesearch.cli import main
from cubesearch.core.errors import ConfigError, CubesearchError
from cubesearch.search import context as search_context
from cubesearch.search.settings import STRATEGY_OPTIONS, SearchSettings, option_flag
from cubesearch.training import Deadline, DeadlineReached, train

TINY = str(Path(__file__).parent / "assets" / "tiny_seg.py")
FAST = dict(input_size=(3, 64, 64), tile_size=32, train_tiles=16, val_tiles=8, batch_size=8,
            progress=False, space="shared")
# an option of each STRATEGY_OPTIONS entry, as the API and the CLI give it
VALUES = {"epochs_per_trial": (1.0, "1"), "rungs": ((1.0, 3.0), "1,3"), "eta": (2, "2")}


def settings(**kw):
    return SearchSettings(model=TINY, budget="50%", **kw)


@pytest.mark.parametrize("given, strategy", [
    ({}, "halving"), ({"epochs_per_trial": 1.0}, "trials"), ({"rungs": (1.0, 3.0)}, "halving"),
    ({"eta": 2}, "halving"), ({"evaluator": "my_eval.py:fn"}, "trials"),
    ({"epochs_per_trial": None}, "halving"),  # None: not given (the CLI's unset option)
])
def test_auto_picks_the_strategy_an_option_asks_for(given, strategy):
    assert settings(strategy="auto", **given).strategy == strategy
    assert settings(**given).strategy == strategy  # auto is the default


def test_options_asking_for_two_strategies_under_auto_are_an_error():
    with pytest.raises(ConfigError, match=r"--epochs-per-trial \(trials\) and --rungs \(halving\) "
                                          "ask for different strategies; name one with --strategy"):
        settings(epochs_per_trial=2.0, rungs=(1.0, 3.0))


# who reads each option
USED_BY = {"epochs_per_trial": {"trials"}, "rungs": {"halving", "map"}, "eta": {"halving"}}


@pytest.mark.parametrize("option", sorted(STRATEGY_OPTIONS))
@pytest.mark.parametrize("strategy", ["trials", "halving", "map"])
def test_an_option_the_strategy_does_not_use_is_an_error_naming_its_user(option, strategy):
    value = VALUES[option][0]
    if strategy in USED_BY[option]:
        assert getattr(settings(strategy=strategy, **{option: value}), option) == value
        return
    with pytest.raises(ConfigError) as info:
        settings(strategy=strategy, **{option: value})
    assert str(info.value) == (f"{option_flag(option)} is not used by --strategy {strategy}; it is "
                               f"for {STRATEGY_OPTIONS[option]}")


def test_the_retired_one_shot_strategy_is_one_error_saying_why_and_its_records_too():
    with pytest.raises(ConfigError, match=r"^--strategy oneshot: the one-shot strategy was retired: "
                                          r"it lost to trials .*0\.96x.*tau 0\.60.*use --strategy halving"):
        settings(strategy="oneshot")
    old = {**settings(strategy="trials").model_dump(), "strategy": "oneshot", "proxy_trials": 500,
           "supernet_epochs": 3.0, "supernet_workers": 1}
    with pytest.raises(ConfigError, match="^a study of 'oneshot': the one-shot strategy was retired"):
        SearchSettings.from_record(old)
    with pytest.raises(ConfigError, match="^a study of 'supernet': the supernet evaluator was retired"):
        SearchSettings.from_record({**old, "strategy": "trials", "evaluator": "supernet"})
    # a trials record of the version that had them stores the retired fields: ignored
    assert SearchSettings.from_record({**old, "strategy": "trials"}).strategy == "trials"


def test_the_cli_refuses_the_retired_options_and_strategy(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["search", TINY, "--budget", "50%", "--strategy", "oneshot", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --strategy oneshot: the one-shot strategy "
                                               "was retired"), err
    for option in ("--proxy-trials", "--supernet-epochs", "--supernet-workers"):
        assert main(["search", TINY, "--budget", "50%", option, "2", "-o", str(out)]) != 0
        assert "No such option" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("strategy, evaluator", [("halving", "my_eval.py:fn")])
def test_an_evaluator_the_strategy_cannot_run_is_an_error(strategy, evaluator):
    with pytest.raises(ConfigError, match=f"--evaluator {evaluator}: --strategy {strategy} .* other "
                                          "evaluators run with --strategy trials"):
        settings(strategy=strategy, evaluator=evaluator)


def test_a_stored_record_keeps_its_strategy_and_drops_what_it_does_not_use():
    halving = settings(strategy="halving").model_dump()
    assert halving["epochs_per_trial"] == 1.0  # a record stores every field…
    assert SearchSettings.from_record(halving).strategy == "halving"  # …and still loads
    old = {k: v for k, v in settings(strategy="trials").model_dump().items() if k != "strategy"}
    assert SearchSettings.from_record(old).strategy == "trials"  # older than `strategy`: trials
    assert SearchSettings.from_record(old, backend="ray").backend == "ray"


def test_the_rule_for_records_without_strategy_has_one_home():
    """A stored record without strategy ran trials: written once, in search/settings.py."""
    package = Path(searching.__file__).parent.parent
    for reader in ("search/study.py", "exporting/export.py", "exporting/calibration.py"):  # record readers
        text = (package / reader).read_text()
        assert "SearchSettings.from_record(" in text and '"strategy": "trials"' not in text \
            and 'strategy="trials"' not in text, reader


@pytest.mark.parametrize("args, message", [
    (["--strategy", "halving", "--epochs-per-trial", "1"],
     "error: --epochs-per-trial is not used by --strategy halving; it is for --strategy trials"),
    (["--strategy", "trials", "--rungs", "1,3"],
     "error: --rungs is not used by --strategy trials; it is for --strategy halving"),
    (["--eta", "2", "--strategy", "trials"],
     "error: --eta is not used by --strategy trials; it is for --strategy halving"),
    (["--budget", "50Gx"], "error: budget '50Gx' is not understood"),
    (["--timeout", "soon"], "error: --timeout 'soon' is not a duration"),
])
def test_the_cli_reports_a_bad_option_in_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch,
                                                                         args, message):
    def no_loading(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(search_context, "load_model", no_loading)
    out = tmp_path / "o"
    budget = [] if "--budget" in args else ["--budget", "50%"]
    assert main(["search", TINY, *budget, *args, "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not out.exists()


def test_the_api_reports_an_unused_option_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(search_context, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ConfigError, match="--eta is not used by --strategy trials"):
        searching.search(TINY, "50%", strategy="trials", eta=2, out=str(tmp_path / "o"), **FAST)
    assert not (tmp_path / "o").exists()


def test_a_deadline_stops_training_at_the_step_that_passes_it():
    with pytest.raises(DeadlineReached, match="--timeout reached at step 1 of 4"):
        train(TINY, data="synthetic", input_size=(3, 32, 32), train_tiles=8, val_tiles=4,
              batch_size=2, epochs=1, progress=False, callbacks=[Deadline(time.time())])


def test_timeout_stops_the_baseline_and_saves_nothing(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(CubesearchError, match=r"--timeout 0.01s ran out while the baseline trained "
                                              r"\(--timeout reached at step \d+ of \d+\); nothing"):
        searching.search(TINY, "100%", out=str(tmp_path / "o"), trials=3, timeout=0.01,
                         baseline_epochs=50, **FAST)
    assert time.perf_counter() - t0 < 30  # 50 epochs would take minutes
    assert not list((tmp_path / "o").glob("baselines/*/model.safetensors"))


def test_timeout_after_the_baseline_starts_no_trial_and_says_so(tiny_study, tmp_path, capsys):
    import shutil

    from rich.console import Console

    source, first = tiny_study
    out = tmp_path / "o"
    shutil.copytree(source, out)
    result = searching.search(TINY, "100%", out=str(out), trials=first.n_complete + 3, timeout=0.001,
                              sampler="random", strategy="trials", epochs_per_trial=1.0,
                              console=Console(stderr=True, width=200), **FAST)
    assert result.n_complete == first.n_complete  # the baseline reused; no trial started
    assert "--timeout 0.001s reached: the search stopped there; run it again to resume" in \
        capsys.readouterr().err


def test_a_trial_still_training_at_the_deadline_stops(tiny_study, tmp_path):
    """A plan's training stops at --timeout's deadline too (the trial is then recorded as failed
    and trained again on resume), not only the baseline's."""
    import shutil

    from cubesearch.search.context import build_context
    from cubesearch.search.evaluators.finetune import evaluate_plan, prepare_baseline

    out = tmp_path / "o"
    shutil.copytree(tiny_study[0], out)
    settings = SearchSettings(model=TINY, budget="100%", out=str(out), strategy="trials",
                              epochs_per_trial=1.0, **{k: v for k, v in FAST.items() if k != "progress"})
    ctx = build_context(settings, deadline=time.time() + 3600)
    prepare_baseline(ctx, progress=False, log=lambda _: None)  # reused: nothing trains here
    ctx.deadline = time.time()  # the deadline passes while the plan trains
    plan = {ctx.searchable[0].name: ctx.space.default_config()}
    with pytest.raises(DeadlineReached, match="--timeout reached at step 1 of"):
        evaluate_plan(ctx, plan, 99)
    assert not ctx.trial_dir(99).exists()  # nothing saved
