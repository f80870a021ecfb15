"""The local backend: Optuna's own loop schedules the trials in this process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from cubesearch.search.context import SearchContext
from cubesearch.search.progress import SearchProgress
from cubesearch.search.record import MAX_REJECTIONS_PER_TRIAL, TrialCounts
from cubesearch.search.settings import SearchSettings
from cubesearch.search.trial import run_trial


class LocalBackend:
    """`study.optimize` on `run_trial`, stopped once the study has the phase's trials."""

    name = "local"

    @contextlib.contextmanager
    def session(self, settings: SearchSettings) -> Iterator[SearchSettings]:
        yield settings

    def run(self, ctx: SearchContext, study: optuna.Study, view: SearchProgress) -> None:
        phase = ctx.phase
        assert phase is not None
        wanted = phase.wanted
        remaining = wanted - TrialCounts.of(study).done(phase)
        if remaining <= 0 or ctx.out_of_time():
            return

        def stop_when_done(study: optuna.Study, trial: FrozenTrial) -> None:
            if trial.state == TrialState.FAIL:
                reason = trial.user_attrs.get("fail_reason", "unknown error")
                view.log(f"[yellow]trial {trial.number} failed: {reason}[/yellow]")
            counts = TrialCounts.of(study)
            if counts.all_failed() or counts.finished(wanted, phase):
                study.stop()

        with view:
            study.optimize(
                lambda t: run_trial(ctx, t), timeout=ctx.time_left(), catch=(Exception,),
                n_trials=remaining * (MAX_REJECTIONS_PER_TRIAL + 3),  # a bound; the callback stops
                callbacks=[stop_when_done, view.trial_finished])
