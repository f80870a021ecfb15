"""Strategies: what a search asks its backend to run, phase by phase.

- "trials": one phase, `trials` trained trials, each plan the sampler asks for.
- "halving" (`cubesearch.search.halving`): successive halving over rungs of the final recipe,
  multi-objective promotion (MO-ASHA).
- "map" (`cubesearch.search.sitemap.strategy`): each site's options scored alone in the baseline (the
  site map), plans chosen from it by integer programming, the finalists trained.

A strategy is `fn(ctx, study, backend, console, progress)`; each phase sets `ctx.phase` and
`ctx.evaluator` and calls `run_phase`, which gives it a progress bar and lets the backend fill it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from rich.console import Console

from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import import_named
from cubesearch.search.context import SearchContext
from cubesearch.search.progress import SearchProgress
from cubesearch.search.record import TrialCounts

Strategy = Callable[[SearchContext, optuna.Study, Any, Console, bool], None]


def run_phase(ctx: SearchContext, study: optuna.Study, backend: Any, console: Console,
              progress: bool, every: int = 1) -> None:
    """The backend fills `ctx.phase` (trained trials, or scored plans) under its own bar."""
    assert ctx.phase is not None
    done = TrialCounts.of(study).done(ctx.phase)
    label = ctx.phase.name + ("" if backend.name == "local" else f" ({backend.name})")
    view = SearchProgress(ctx, console, done=done, enabled=progress, label=label, every=every)
    backend.run(ctx, study, view)


def run_trials(ctx: SearchContext, study: optuna.Study, backend: Any, console: Console,
               progress: bool) -> None:
    """Every plan the sampler asks for is evaluated, `trials` of them."""
    run_phase(ctx, study, backend, console, progress)


# name → the strategy, or "module:function" imported when chosen
STRATEGIES: dict[str, Strategy | str] = {"trials": run_trials,
                                         "halving": "cubesearch.search.halving:run_halving",
                                         "map": "cubesearch.search.sitemap.strategy:run_map"}


def get_strategy(name: str) -> Strategy:
    entry = STRATEGIES.get(name)
    if entry is None:
        raise CubesearchError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})")
    return import_named(entry) if isinstance(entry, str) else entry
