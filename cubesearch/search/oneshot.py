"""The one-shot strategy (`--strategy oneshot`): one supernet scores many plans, training confirms
the best of them.

1. Supernet: `SupernetEvaluator.prepare` (the driver's set-up, under the `--out` lock) trains the
   supernet from the trained baseline, or resumes it from its last epoch, or reuses it; it lives
   in OUT/supernet/…, keyed like the baseline by everything it depends on.
2. Scoring: the study's sampler explores `proxy_trials` plans, each scored in the supernet and
   recorded as a trial marked `scored`; the cost model rejects over-budget plans before any
   scoring, as in every search.
3. Confirming: `trials` plans covering the scored front (greedy hypervolume contribution, front
   layer by layer), the unconverted model and FullCube first, are enqueued and trained as ordinary
   trials, each fine-tuned from its weights in the supernet. The table, `search.json`, export and
   the plot's front use these; each carries its supernet score (`supernet_iou`).

Every phase resumes: scored and confirmed trials stay in the study, the plans chosen for
confirmation are stored with it, and a study scored in one supernet refuses another.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from cubesearch.errors import CubesearchError
from cubesearch.pareto import loss_hypervolume
from cubesearch.search.context import SearchContext, TrialInfo
from cubesearch.search.evaluators.finetune import evaluate_plan
from cubesearch.search.evaluators.supernet import SupernetEvaluator
from cubesearch.search.record import SCORED, Phase, TrialCounts, TrialOutcome
from cubesearch.search.strategy import run_phase

# Study user attributes: the supernet the plans were scored in, the scored trials confirmed
SUPERNET_ATTR = "oneshot_supernet"
CONFIRM_ATTR = "oneshot_confirm"
REFERENCES = ("baseline", "fullcube")
LOG_EVERY_SCORED = 100  # off a terminal, one line per this many scored plans


@dataclass
class ConfirmEvaluator:
    """A confirmed trial: the plan extracted from the supernet (its blocks and every other weight
    as trained there), then fine-tuned with the trial recipe and evaluated like any trial."""

    supernet: SupernetEvaluator
    name: str = "finetune"

    def prepare(self, ctx: SearchContext, *, progress: bool, log: Callable[[str], None]) -> None:
        self.supernet.prepare(ctx, progress=progress, log=log)

    def evaluate(self, ctx: SearchContext, trial: TrialInfo) -> TrialOutcome:
        sites = dict(trial.plan.sites)
        start = self.supernet.extract(ctx, sites)
        return evaluate_plan(ctx, sites, trial.number, progress=trial.progress, start=start)


# --- which scored plans to confirm ---------------------------------------------------------------


def _losses(trials: Sequence[FrozenTrial], objectives: Sequence[str]) -> np.ndarray:
    """Every objective as "lower is better": -IoU (the supernet score), the costs as recorded."""
    return np.array([[-float(t.user_attrs["iou"]) if o == "iou" else float(t.user_attrs[o])
                      for o in objectives] for t in trials], dtype=float)


def _non_dominated(losses: np.ndarray) -> list[int]:
    keep = []
    for i, row in enumerate(losses):
        dominated = np.all(losses <= row, axis=1) & np.any(losses < row, axis=1)
        if not dominated.any():
            keep.append(i)
    return keep


def cover_front(trials: Sequence[FrozenTrial], k: int, objectives: Sequence[str]) -> list[FrozenTrial]:
    """Up to `k` of `trials` covering their front: each pick adds the most hypervolume to the
    picks so far (reference: IoU 0 and 1.1× the largest cost), taken front layer by layer (the
    first front, then the front of what is left…). One trial per distinct plan."""
    unique: dict[str, FrozenTrial] = {}
    for t in sorted(trials, key=lambda t: t.number):
        unique.setdefault(json.dumps(t.user_attrs.get("plan", {}), sort_keys=True), t)
    pool = list(unique.values())
    if not pool or k <= 0:
        return []
    losses = _losses(pool, objectives)
    reference = np.where(np.array([o == "iou" for o in objectives]), 0.0,
                         losses.max(axis=0) * 1.1 + 1e-12)
    costs = [j for j, o in enumerate(objectives) if o != "iou"]
    chosen: list[int] = []
    left = list(range(len(pool)))
    while left and len(chosen) < k:
        layer = [left[i] for i in _non_dominated(losses[left])]
        while layer and len(chosen) < k:
            base = loss_hypervolume(losses[chosen], reference) if chosen else 0.0
            gains = [loss_hypervolume(losses[[*chosen, i]], reference) - base for i in layer]
            best = max(range(len(layer)), key=lambda j: (gains[j], -losses[layer[j], costs].sum()))
            chosen.append(layer.pop(best))
        left = [i for i in left if i not in chosen]
    return [pool[i] for i in chosen]


def scored_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(SCORED) and not t.user_attrs.get("infeasible")]


def confirmations(study: optuna.Study, ctx: SearchContext) -> list[FrozenTrial]:
    """The scored trials to confirm: the references, then plans covering the scored front, `trials`
    in all. Chosen once and stored with the study, so a resumed search confirms the same ones."""
    scored = scored_trials(study)
    by_number = {t.number: t for t in scored}
    stored = study.user_attrs.get(CONFIRM_ATTR)
    if stored is not None:
        return [by_number[n] for n in stored if n in by_number]
    references = [next(t for t in scored if t.user_attrs.get("reference") == ref)
                  for ref in REFERENCES if any(t.user_attrs.get("reference") == ref for t in scored)]
    others = [t for t in scored if not t.user_attrs.get("reference") and t.user_attrs.get("feasible", True)]
    wanted = ctx.settings.trials
    picks = cover_front(others, max(0, wanted - len(references)), ctx.settings.objectives)
    chosen = [*references, *picks][:wanted]
    study.set_user_attr(CONFIRM_ATTR, [t.number for t in chosen])
    return chosen


def enqueue_confirmations(study: optuna.Study, chosen: Sequence[FrozenTrial]) -> int:
    """Queue a trial for each chosen plan not yet confirmed, done, queued or running (a resume
    queues only what is missing). Returns how many were queued."""
    covered = {t.user_attrs.get("confirms") for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING))}
    queued = 0
    for t in chosen:
        if t.number in covered:
            continue
        attrs: dict[str, Any] = {"confirms": t.number, "supernet_iou": float(t.user_attrs["iou"])}
        if t.user_attrs.get("reference"):
            attrs["reference"] = t.user_attrs["reference"]
        study.enqueue_trial(dict(t.params), user_attrs=attrs, skip_if_exists=False)
        queued += 1
    return queued


# --- the strategy ----------------------------------------------------------------------------


def check_supernet(study: optuna.Study, ctx: SearchContext, supernet: SupernetEvaluator) -> None:
    """A study's plans were scored in one supernet: refuse to go on with one trained otherwise."""
    folder = supernet.folder(ctx).name
    recorded = study.user_attrs.get(SUPERNET_ATTR)
    if recorded is None:
        study.set_user_attr(SUPERNET_ATTR, folder)
    elif recorded != folder and TrialCounts.of(study).scored:
        raise CubesearchError(
            f"study {study.study_name!r} scored its plans in supernet {recorded!r}, trained with "
            f"other settings than now ({folder!r}: --supernet-epochs, the baseline's training "
            "options or the space differ); resume with the same settings or pick --study NAME")


def run_oneshot(ctx: SearchContext, study: optuna.Study, backend: Any, console: Console,
                progress: bool) -> None:
    """Score `proxy_trials` plans in the supernet, then confirm the chosen ones by training."""
    supernet = ctx.evaluator
    if not isinstance(supernet, SupernetEvaluator):
        raise CubesearchError("--strategy oneshot scores plans in a supernet and confirms them "
                              "with cubesearch's trainer (--evaluator finetune)")
    check_supernet(study, ctx, supernet)
    s = ctx.settings
    ctx.phase = Phase("scoring", s.proxy_trials, scored=True)
    run_phase(ctx, study, backend, console, progress, every=LOG_EVERY_SCORED)
    chosen = confirmations(study, ctx)
    if not chosen:
        raise CubesearchError("no plan was scored within budget, so none can be confirmed; raise "
                              "--budget or --proxy-trials")
    queued = enqueue_confirmations(study, chosen)
    counts = TrialCounts.of(study)
    console.print(f"confirming {len(chosen)} plans of the supernet's front by training "
                  f"({counts.trained} done, {queued} queued)")
    ctx.evaluator = ConfirmEvaluator(supernet)
    ctx.phase = Phase("confirming", len(chosen), rejected_before=counts.rejected)
    run_phase(ctx, study, backend, console, progress)
