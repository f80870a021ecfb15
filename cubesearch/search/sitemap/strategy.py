"""`search --strategy map`: the site map, plans by integer programming, finalists trained.

1. The map (`build_map`) in the search's --out, from the search's own trained baseline: cells it
   already holds are not measured again; on `--backend ray` the cells are Ray tasks.
2. The MILP's predicted front up to `--budget` (`sweep`: FLOPs or latency, whichever the budget
   bounds; each plan's exact cost re-checked, `plans.exact_costs`), and `--trials` finalists
   spread across it (`spread`), chosen once and stored with the study (a resumed search trains
   the same ones).
3. Uniform channel pruning at the finalists' budgets: every searchable conv that can be narrowed
   (not the prediction conv, more than 8 output channels) at one kept fraction R, the largest
   whose built model is within each finalist's FLOPs (`pruning_plans`), labelled `pruning`: the
   curve every front is judged against.
4. The finalists, the unconverted model (the paired baseline), FullCube and the pruning plans are
   queued in the study and trained by the final recipe over the top rung's epochs
   (`HalvingEvaluator` straight to the top rung: the one path that trains a plan by the final
   recipe in a search), by the search's backend. The front reports their trained IoU; each
   finalist records its `predicted_iou`. A queued plan's narrowed convs travel as its `widths`
   user attribute (the study's parameters say only which sites are Cube blocks).

A plan already trained (or queued) is not queued again: a search killed at any point resumes
with the cells and plans it has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from rich.console import Console

from cubesearch.blocks import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import file_lock
from cubesearch.search.context import SearchContext, TrialInfo
from cubesearch.search.evaluators import FineTuneEvaluator
from cubesearch.search.evaluators.finetune import prepare_baseline
from cubesearch.search.halving import HalvingEvaluator
from cubesearch.search.pareto import PRUNING_LABEL
from cubesearch.search.record import FINALIST, PRUNED, WIDTHS, Phase, TrialOutcome
from cubesearch.search.sitemap.build import SiteMap, build_map
from cubesearch.search.sitemap.cells import narrowed_cost
from cubesearch.search.sitemap.milp import Choice, spread, sweep, unmet_message
from cubesearch.search.sitemap.plans import exact_costs, plan_dict, plan_parts
from cubesearch.search.strategy import run_phase

FINALISTS_ATTR = "map_finalists"
PRUNING_ATTR = "map_pruning"
RATIOS = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))  # uniform widths tried


def budget_limit(ctx: SearchContext) -> tuple[str, float]:
    """The cost `--budget` bounds, in the map's units (GFLOPs or ms), and its bound."""
    b = ctx.budget
    if b is not None and b.objective == "latency":
        return "latency", b.value / 1e3
    return "gflops", ctx.budget_flops / 1e9


def choose_finalists(ctx: SearchContext, sitemap: SiteMap) -> list[Choice]:
    """`--trials` plans spread over the MILP's predicted front up to the budget (the unconverted
    model and FullCube are references, trained anyway)."""
    table = sitemap.table
    cost, bound = budget_limit(ctx)
    front = sweep(table, cost, bound, points=max(41, 4 * ctx.settings.trials),
                  limits={cost: bound}, exact=exact_costs(ctx, sitemap.data))
    fullcube = ({s.name: ctx.space.default_config() for s in ctx.searchable}, {})
    front = [c for c in front if c.changed() and plan_parts(sitemap.data, c.options) != fullcube]
    if not front:
        raise CubesearchError(unmet_message(table, {cost: bound}) if table.lowest(cost) > bound else
                              f"the map predicts no plan under budget {ctx.settings.budget} that "
                              "changes a site besides FullCube: every cell loses IoU or saves "
                              f"nothing (see {sitemap.png})")
    return spread(front, ctx.settings.trials, cost)


def stored(study: optuna.Study, attr: str, make: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """What the search chose when it began (stored with the study under `attr`), else `make()`,
    stored now: a resumed search trains the same plans."""
    found = study.user_attrs.get(attr)
    if found is None:
        found = make()
        study.set_user_attr(attr, found)
    return list(found)


def finalist_records(ctx: SearchContext, sitemap: SiteMap) -> list[dict[str, Any]]:
    return [{**plan_dict(plan_parts(sitemap.data, f.options)), "options": f.changed(),
             "predicted_iou": f.predicted_iou, **f.costs} for f in choose_finalists(ctx, sitemap)]


def prunable(ctx: SearchContext) -> list[str]:
    """The searchable convs uniform pruning narrows: all but the prediction conv and convs of 8
    output channels or fewer (nothing to remove)."""
    return [s.name for s in ctx.searchable if not s.prediction and s.out_channels > 8]


def pruning_plans(ctx: SearchContext, targets: Sequence[float],
                  log: Callable[[str], None]) -> list[dict[str, Any]]:
    """For each target (GFLOPs), the widest uniform width R (of `RATIOS`) whose built model is
    within it; distinct plans only. Empty, with a line saying why, where the model cannot be
    narrowed uniformly."""
    convs = prunable(ctx)
    if not convs:
        log("pruning curve: no searchable conv has more than 8 output channels to narrow")
        return []
    try:
        costs = {r: narrowed_cost(ctx, {c: float(r) for c in convs}) for r in RATIOS}
    except CubesearchError as exc:
        log(f"pruning curve: not trained: {exc}")
        return []
    plans: dict[float, dict[str, Any]] = {}
    for target in targets:
        fits = [r for r in RATIOS if costs[r][0] / 1e9 <= target * (1 + 1e-12)]
        if fits:
            r = max(fits)
            plans[r] = {"ratio": float(r), "widths": {c: float(r) for c in convs},
                        "gflops": costs[r][0] / 1e9, "params": costs[r][1], "target_gflops": target}
    return [plans[r] for r in sorted(plans)]


def _covered(study: optuna.Study, key: str) -> set[Any]:
    return {t.user_attrs.get(key) for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING))}


def enqueue_plans(study: optuna.Study, ctx: SearchContext, plans: Sequence[dict[str, Any]],
                  key: str, attrs: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """Queue each plan (`sites`, `widths`) not yet trained, queued or running, marked `key`."""
    covered = _covered(study, key)
    queued = 0
    for i, p in enumerate(plans):
        if i in covered:
            continue
        sites = {n: CubeConfig.from_dict(c) for n, c in (p.get("sites") or {}).items()}
        user_attrs = {key: i, **attrs(p), **({WIDTHS: p["widths"]} if p.get("widths") else {})}
        study.enqueue_trial(ctx.space.params_for(sites, ctx.searchable), skip_if_exists=False,
                            user_attrs=user_attrs)
        queued += 1
    return queued


@dataclass
class MapEvaluator:
    """Trains a queued plan by the final recipe over the top rung's epochs, from the warm start
    (`HalvingEvaluator` straight to the top rung), its plan completed by the narrowed convs it
    was queued with (`widths`: trial number → conv → R)."""

    widths: dict[int, dict[str, float]] = field(default_factory=dict)
    name: str = "finetune"

    def prepare(self, ctx: SearchContext, *, progress: bool, log: Callable[[str], None]) -> None:
        prepare_baseline(ctx, progress=progress, log=log)

    def evaluate(self, ctx: SearchContext, trial: TrialInfo) -> TrialOutcome:
        narrowed = self.widths.get(trial.number)
        if narrowed:
            trial = dataclasses.replace(trial, plan=trial.plan.model_copy(update={"widths": narrowed}))
        return HalvingEvaluator(rung=len(ctx.settings.rungs) - 1, direct=True).evaluate(ctx, trial)


def queued_widths(study: optuna.Study) -> dict[int, dict[str, float]]:
    return {t.number: dict(t.user_attrs[WIDTHS]) for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(WIDTHS)}


def run_map(ctx: SearchContext, study: optuna.Study, backend: Any, console: Console,
            progress: bool) -> None:
    """The map (built or reused), the finalists chosen from it and the pruning curve at their
    budgets, trained with the references."""
    if not isinstance(ctx.evaluator, (FineTuneEvaluator, HalvingEvaluator, MapEvaluator)):
        raise CubesearchError("--strategy map trains its finalists with cubesearch's trainer "
                              "(--evaluator finetune)")
    with file_lock(ctx.out / ".map.lock"):
        sitemap = build_map(ctx, backend=ctx.settings.backend, console=console, progress=progress)
    finalists = stored(study, FINALISTS_ATTR, lambda: finalist_records(ctx, sitemap))
    pruning = stored(study, PRUNING_ATTR, lambda: pruning_plans(
        ctx, [f["gflops"] for f in finalists], console.print))
    queued = enqueue_plans(study, ctx, finalists, FINALIST,
                           lambda f: {"predicted_iou": f["predicted_iou"]})
    queued += enqueue_plans(study, ctx, pruning, PRUNED,
                            lambda p: {"reference": PRUNING_LABEL, "pruning_ratio": p["ratio"]})
    s = ctx.settings
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    ious = [f["predicted_iou"] for f in finalists]
    ratios = ", ".join(format(p["ratio"], "g") for p in pruning) or "none"
    console.print(f"map: {len(finalists)} finalists from the predicted front (predicted IoU "
                  f"{min(ious):.4f}–{max(ious):.4f}), uniform pruning at {len(pruning)} widths "
                  f"({ratios}); {queued} queued, "
                  f"{waiting} to train {s.rungs[-1]:g} epochs of the final recipe")
    ctx.evaluator = MapEvaluator(widths=queued_widths(study))
    ctx.phase = Phase(f"finalists ({s.rungs[-1]:g} ep)", len(finalists) + len(pruning) + 2,
                      queued_only=True)
    if waiting:  # (an empty queue would let the sampler propose plans of its own)
        run_phase(ctx, study, backend, console, progress)
