"""`search --strategy map`: the site map, plans by integer programming, finalists trained.

1. The map (`build_map`) in the search's --out, from the search's own trained baseline: cells it
   already holds are not measured again; on `--backend ray` the cells are Ray tasks.
2. The MILP's predicted front up to `--budget` (`sweep`: FLOPs or latency, whichever the budget
   bounds; each plan's exact cost re-checked: the cost model, or the latency model with its
   correction), and `--trials` finalists spread across it (`spread`). They are chosen once and
   stored with the study, so a resumed search trains the same ones.
3. The finalists, the unconverted model (the paired baseline) and FullCube are queued in the
   study and trained by the final recipe over the top rung's epochs (`HalvingEvaluator` straight
   to the top rung: the one path that trains a plan by the final recipe in a search), by the
   search's backend. The front reports their trained IoU; each records its `predicted_iou`.

A finalist already trained (or queued) is not queued again: a search killed at any point
resumes with the cells and finalists it has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console

from cubesearch.blocks import CubeConfig
from cubesearch.errors import CubesearchError
from cubesearch.helpers import file_lock
from cubesearch.search.context import SearchContext
from cubesearch.search.evaluators import FineTuneEvaluator
from cubesearch.search.halving import HalvingEvaluator
from cubesearch.search.record import Phase
from cubesearch.search.strategy import run_phase
from cubesearch.sitemap.build import SiteMap, build_map, check_space
from cubesearch.sitemap.milp import Choice, MapTable, spread, sweep, unmet_message

FINALISTS_ATTR = "map_finalists"
FINALIST = "map_finalist"  # a queued finalist's index in the stored list


def plan_of(data: Mapping[str, Any], options: Mapping[str, str]) -> dict[str, CubeConfig]:
    """Site → CubeConfig of a chosen plan (its changed sites), from the map's cells."""
    configs = {(c["site"], c["option"]): c.get("config") for c in data["cells"]}
    return {site: CubeConfig.from_dict(configs[(site, option)])
            for site, option in options.items() if option != "keep"}


def budget_limit(ctx: SearchContext) -> tuple[str, float]:
    """The cost `--budget` bounds, in the map's units (GFLOPs or ms), and its bound."""
    b = ctx.budget
    if b is not None and b.objective == "latency":
        return "latency", b.value / 1e3
    return "gflops", ctx.budget_flops / 1e9


def exact_costs(ctx: SearchContext, data: Mapping[str, Any]):
    """The exact cost of a chosen plan: the cost model's FLOPs (equal to fvcore's count of the
    built model) and, with a latency model, its prediction with the correction."""
    def exact(options: Mapping[str, str]) -> dict[str, float]:
        plan = plan_of(data, options)
        costs = {"gflops": ctx.cost.flops(plan) / 1e9, "params": float(ctx.cost.params(plan))}
        if ctx.latency is not None:
            costs["latency"] = ctx.latency.latency_ms(plan)
        return costs

    return exact


def choose_finalists(ctx: SearchContext, sitemap: SiteMap) -> list[Choice]:
    """`--trials` plans spread over the MILP's predicted front up to the budget (the unconverted
    model and FullCube are references, trained anyway)."""
    table: MapTable = sitemap.table
    cost, bound = budget_limit(ctx)
    front = sweep(table, cost, bound, points=max(41, 4 * ctx.settings.trials),
                  limits={cost: bound}, exact=exact_costs(ctx, sitemap.data))
    fullcube = {s.name: ctx.space.default_config() for s in ctx.searchable}
    front = [c for c in front if c.changed() and plan_of(sitemap.data, c.options) != fullcube]
    if not front:
        raise CubesearchError(unmet_message(table, {cost: bound}) if table.lowest(cost) > bound else
                              f"the map predicts no plan under budget {ctx.settings.budget} that "
                              "changes a site besides FullCube: every cell loses IoU or saves "
                              f"nothing (see {sitemap.png})")
    return spread(front, ctx.settings.trials, cost)


def stored_finalists(study: optuna.Study, ctx: SearchContext, sitemap: SiteMap) -> list[dict[str, Any]]:
    """The finalists chosen when the search began (stored with the study), else chosen now."""
    stored = study.user_attrs.get(FINALISTS_ATTR)
    if stored is not None:
        return list(stored)
    chosen = [{"sites": {n: c.to_dict() for n, c in plan_of(sitemap.data, f.options).items()},
               "options": f.changed(), "predicted_iou": f.predicted_iou, **f.costs}
              for f in choose_finalists(ctx, sitemap)]
    study.set_user_attr(FINALISTS_ATTR, chosen)
    return chosen


def enqueue_finalists(study: optuna.Study, ctx: SearchContext, finalists: list[dict[str, Any]]) -> int:
    """Queue each finalist not yet trained, queued or running."""
    covered = {t.user_attrs.get(FINALIST) for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING))}
    queued = 0
    for i, f in enumerate(finalists):
        if i in covered:
            continue
        plan = {n: CubeConfig.from_dict(c) for n, c in f["sites"].items()}
        study.enqueue_trial(ctx.space.params_for(plan, ctx.searchable), skip_if_exists=False,
                            user_attrs={FINALIST: i, "predicted_iou": f["predicted_iou"]})
        queued += 1
    return queued


def run_map(ctx: SearchContext, study: optuna.Study, backend: Any, console: Console,
            progress: bool) -> None:
    """The map (built or reused), the finalists chosen from it, trained with the references."""
    if not isinstance(ctx.evaluator, (FineTuneEvaluator, HalvingEvaluator)):
        raise CubesearchError("--strategy map trains its finalists with cubesearch's trainer "
                              "(--evaluator finetune)")
    check_space(ctx)
    with file_lock(ctx.out / ".map.lock"):
        sitemap = build_map(ctx, backend=ctx.settings.backend, console=console, progress=progress)
    finalists = stored_finalists(study, ctx, sitemap)
    queued = enqueue_finalists(study, ctx, finalists)
    s = ctx.settings
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    console.print(f"map: {len(finalists)} finalists from the predicted front (predicted IoU "
                  f"{min(f['predicted_iou'] for f in finalists):.4f}–"
                  f"{max(f['predicted_iou'] for f in finalists):.4f}), {queued} queued; "
                  f"{waiting} plans to train {s.rungs[-1]:g} epochs of the final recipe")
    ctx.evaluator = HalvingEvaluator(rung=len(s.rungs) - 1, direct=True)
    ctx.phase = Phase(f"finalists ({s.rungs[-1]:g} ep)", len(finalists) + 2, queued_only=True)
    if waiting:  # (an empty queue would let the sampler propose plans of its own)
        run_phase(ctx, study, backend, console, progress)
