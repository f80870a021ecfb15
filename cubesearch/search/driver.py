"""`search(...)`: set-up → `backend.run(ctx, study, view)` → wrap-up, for every backend.

A backend (`BACKENDS`, by name) only schedules trials: `session(settings)` holds what it needs
around the whole search (Ray: the cluster connection) and `run` runs trials until the study has
its trained trials. Everything else — context, evaluator, study, baseline, references, the
result — is here, once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import optuna
from rich.console import Console

from cubesearch.checkpoint import check_destination
from cubesearch.errors import CubesearchError
from cubesearch.logging import progress_enabled
from cubesearch.redact import mask_url
from cubesearch.search.context import (
    Evaluator,
    SearchContext,
    budget_warning,
    build_context,
    folder_lock,
)
from cubesearch.search.evaluators import UserFunction, callable_name, make_evaluator
from cubesearch.search.progress import SearchProgress
from cubesearch.search.record import TrialCounts, first_failure
from cubesearch.search.result import SearchResult, collect_result, write_summary
from cubesearch.search.settings import SearchSettings
from cubesearch.search.study import enqueue_references, open_study


class Backend(Protocol):
    """Who schedules the trials."""

    name: str
    label: str  # the progress bar's

    def session(self, settings: SearchSettings) -> AbstractContextManager[SearchSettings]: ...

    def run(self, ctx: SearchContext, study: optuna.Study, view: SearchProgress) -> None: ...


# name → "module:class"; imported when chosen (the Ray backend imports Ray, which is slow)
BACKENDS = {"local": "cubesearch.search.local:LocalBackend",
            "ray": "cubesearch.search.ray:RayBackend"}


def make_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise CubesearchError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


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
    check_destination(settings.out, option="--out", replaceable=False)  # before any work
    chosen = make_evaluator(settings.evaluator, given)  # a bad evaluator is found before any work
    console = console or Console(stderr=True)
    backend = make_backend(settings.backend)
    with backend.session(settings) as settings:
        ctx, study, view = set_up(settings, chosen, backend, console, progress_enabled(progress))
        backend.run(ctx, study, view)
        return wrap_up(ctx, study, view)


def set_up(settings: SearchSettings, evaluator: Evaluator, backend: Backend, console: Console,
           progress: bool) -> tuple[SearchContext, optuna.Study, SearchProgress]:
    """Context, study, the evaluator's preparation (baseline…) and the reference trials."""
    log: Callable[[str], None] = console.print
    ctx = build_context(settings)
    ctx.evaluator = evaluator
    created = not ctx.out.exists()
    try:
        ctx.out.mkdir(parents=True, exist_ok=True)
        study = open_study(settings)
    except BaseException:
        if created and ctx.out.is_dir() and not any(ctx.out.iterdir()):
            ctx.out.rmdir()  # a storage error leaves no empty --out behind
        raise
    from cubesearch.latency.search import budget_line, check_study_device

    check_study_device(study, ctx)  # a study's latencies are those of one device
    done = TrialCounts.of(study).trained
    log(f"study {study.study_name!r} in {mask_url(settings.storage_url())}: {done} of "
        f"{settings.trials} trials trained; budget {budget_line(ctx)} "
        f"({len(ctx.searchable)} searchable sites, space {ctx.space.name!r})")
    warning = budget_warning(ctx)
    if warning:
        log(warning)
    with folder_lock(ctx.out / ".baseline.lock"):  # processes sharing --out prepare once
        evaluator.prepare(ctx, progress=progress, log=log)
        enqueue_references(study, ctx)
    return ctx, study, SearchProgress(ctx, console, done=done, enabled=progress, label=backend.label)


def wrap_up(ctx: SearchContext, study: optuna.Study, view: SearchProgress) -> SearchResult:
    """The tight-budget note, the result, "every trial failed", `search.json` and the plot."""
    note = TrialCounts.of(study).tight_budget_note(ctx.settings.trials)
    if note:
        view.log(f"[yellow]{note}[/yellow]")
    result = collect_result(study, ctx)
    first = first_failure(study)
    if result.n_complete == 0 and first is not None:
        raise CubesearchError(f"every trial failed; the first: trial {first.number}: "
                              f"{first.user_attrs.get('fail_reason', 'unknown error')}")
    write_summary(result, ctx)
    return result
