"""`search(...)`: set-up → the strategy's phases, each `backend.run(ctx, study, view)` → wrap-up.

A backend (`BACKENDS`, by name) only schedules trials: `session(settings)` holds what it needs
around the whole search (Ray: the cluster connection) and `run` runs trials until the study has
its phase's trials. A strategy (`cubesearch.search.strategy`) says which phases: "trials",
"halving" or "map". Everything else — context,
evaluator, study, baseline, references, the result — is here, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import optuna
from rich.console import Console

from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import file_lock, import_named
from cubesearch.core.logging import progress_enabled
from cubesearch.core.redact import mask_url
from cubesearch.plan.checkpoint import check_destination
from cubesearch.search.context import (
    Evaluator,
    SearchContext,
    budget_line,
    budget_warning,
    build_context,
)
from cubesearch.search.evaluators import UserFunction, callable_name, make_evaluator
from cubesearch.search.progress import SearchProgress
from cubesearch.search.record import TrialCounts, first_failure
from cubesearch.search.result import SearchResult, collect_result, write_summary
from cubesearch.search.settings import SearchSettings
from cubesearch.search.strategy import get_strategy
from cubesearch.search.study import check_study_device, enqueue_references, open_study


class Backend(Protocol):
    """Who schedules the trials."""

    name: str

    def session(self, settings: SearchSettings) -> AbstractContextManager[SearchSettings]: ...

    def run(self, ctx: SearchContext, study: optuna.Study, view: SearchProgress) -> None: ...


# name → "module:class"; imported when chosen (the Ray backend imports Ray, which is slow)
BACKENDS = {"local": "cubesearch.search.local:LocalBackend",
            "ray": "cubesearch.search.ray:RayBackend"}


def make_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise CubesearchError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    return import_named(BACKENDS[name])()


def search(model: str, budget: str, *, progress: bool = True, console: Console | None = None,
           evaluator: str | UserFunction | Evaluator | None = None, **options: Any) -> SearchResult:
    """Run (or resume) a search; `options` are `SearchSettings` fields. Returns the result.

    `evaluator`: how a plan becomes an IoU: "finetune" (the default), `path/to/eval.py:fn`, a
    function `fn(model, trial) -> {"iou": ...}`, or an `Evaluator`. Re-running with the same
    `out`/`storage` and study resumes: completed trials are kept, the baseline is not retrained,
    and `trials` counts the total.
    """
    given = None if evaluator is None or isinstance(evaluator, str) else evaluator
    if isinstance(evaluator, str):
        options["evaluator"] = evaluator
    elif given is not None:
        options["evaluator"] = getattr(given, "name", None) or callable_name(given)
    settings = SearchSettings(model=model, budget=budget, **options)
    deadline = time.time() + settings.timeout if settings.timeout else None  # the whole search's
    settings.check_budget()  # a typo is found before the model loads
    check_destination(settings.out, option="--out", replaceable=False)  # before any work
    chosen = make_evaluator(settings, given)  # a bad evaluator is found before any work
    strategy = get_strategy(settings.strategy)
    console = console or Console(stderr=True)
    backend = make_backend(settings.backend)
    show = progress_enabled(progress)
    with backend.session(settings) as settings:
        ctx, study = set_up(settings, chosen, console, show, deadline)
        strategy(ctx, study, backend, console, show)
        return wrap_up(ctx, study, console)


def set_up(settings: SearchSettings, evaluator: Evaluator, console: Console, progress: bool,
           deadline: float | None = None) -> tuple[SearchContext, optuna.Study]:
    """Context, study, the evaluator's preparation (baseline…) and the reference trials."""
    log: Callable[[str], None] = console.print
    ctx = build_context(settings, deadline)
    ctx.evaluator = evaluator
    created = not ctx.out.exists()
    try:
        ctx.out.mkdir(parents=True, exist_ok=True)
        study = open_study(settings)
    except BaseException:
        if created and ctx.out.is_dir() and not any(ctx.out.iterdir()):
            ctx.out.rmdir()  # a storage error leaves no empty --out behind
        raise
    check_study_device(study, ctx)  # a study's latencies are those of one device
    log(f"study {study.study_name!r} in {mask_url(settings.storage_url())}: "
        f"{progress_line(settings, TrialCounts.of(study), evaluator)}; budget {budget_line(ctx)} "
        f"({len(ctx.searchable)} searchable sites, space {ctx.space.name!r})")
    warning = budget_warning(ctx)
    if warning:
        log(warning)
    with file_lock(ctx.out / ".baseline.lock"):  # processes sharing --out prepare once
        evaluator.prepare(ctx, progress=progress, log=log)
        enqueue_references(study, ctx)
    return ctx, study


def progress_line(settings: SearchSettings, counts: TrialCounts, evaluator: Evaluator) -> str:
    """What the study holds, in its strategy's counts: `2 of 10 plans ranked on rung 0 (3
    epochs), 0 trained on to 9` (halving), `4 of 20 trials trained`."""
    if settings.strategy == "halving":
        rungs = [*counts.rungs, *[0] * len(settings.rungs)][:len(settings.rungs)]
        line = f"{rungs[0]} of {settings.trials} plans ranked on rung 0 ({settings.rungs[0]:g} epochs)"
        return line + "".join(f", {n} trained on to {e:g}" for n, e in zip(rungs[1:], settings.rungs[1:],
                                                                            strict=True))
    return f"{counts.trained} of {settings.trials} trials trained"


def wrap_up(ctx: SearchContext, study: optuna.Study, console: Console) -> SearchResult:
    """The tight-budget note, the result, "every trial failed", `search.json` and the plot."""
    phase = ctx.phase  # the last phase's (halving: the top rung)
    note = TrialCounts.of(study).tight_budget_note(phase.wanted if phase else ctx.settings.trials, phase)
    if note:
        console.print(f"[yellow]{note}[/yellow]")
    if ctx.out_of_time():
        console.print(f"[yellow]--timeout {ctx.settings.timeout:g}s reached: the search stopped "
                      "there; run it again to resume[/yellow]")
    result = collect_result(study, ctx)
    first = first_failure(study)
    if result.n_complete == 0 and result.n_scored == 0 and first is not None:
        raise CubesearchError(f"every trial failed; the first: trial {first.number}: "
                              f"{first.user_attrs.get('fail_reason', 'unknown error')}")
    write_summary(result, ctx)
    return result
