"""The multi-fidelity strategy (`--strategy halving`): successive halving with multi-objective
promotion (MO-ASHA, Schmucker et al. 2021), synchronous, on Optuna's study.

Rung r trains to `rungs[r]` epochs of the final recipe's schedule (`training.finetune.Recipe`:
warm start, cosine to 0 over the top rung's epochs): rung 0 trains `trials` plans the
sampler proposes from the warm start; each later rung takes the best 1/`eta` of the rung below
(`promotion.promote`: non-dominated rank, then hypervolume contribution) and trains them on from
that rung's checkpoint for `rungs[r] - rungs[r-1]` more epochs, where the schedule left off. A
rung's IoU is the val IoU after its epochs: the rungs are prefixes of one schedule, as in ASHA.

Lower rungs are recorded as proxies (`SCORED`, with their `rung`): they are the plot's cloud, not
the front. The top rung's trials are the front, trained by the final recipe with the best
weights kept. Each trial records its rungs' IoUs (`iou_rung0`, …): Optuna's intermediate values
(`trial.report`) are not available in multi-objective studies (optuna#3450).

Every rung resumes: finished trials stay in the study, the promotions are stored with it
(`halving_promoted_R`) and only what is missing is queued again, so a search killed at any rung
repeats no finished rung. Dedicated to the finetune evaluator; any backend runs the phases.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from cubesearch.core.errors import CubesearchError
from cubesearch.search.context import SearchContext, TrialInfo
from cubesearch.search.evaluators.finetune import (
    FineTuneEvaluator,
    TrialError,
    finish_trial,
    prepare_baseline,
)
from cubesearch.search.promotion import loss_rows, promote
from cubesearch.search.record import (
    RECORDED_METRICS,
    RUNG,
    Phase,
    TrialCounts,
    TrialOutcome,
    resolve_checkpoint,
)
from cubesearch.search.strategy import run_phase
from cubesearch.training.finetune import Recipe, train_final

PROMOTED_ATTR = "halving_promoted_{}"


def recipe_for(ctx: SearchContext) -> Recipe:
    """The final recipe over the top rung's epochs, at the search's rates and distillation."""
    s = ctx.settings
    return Recipe(epochs=s.rungs[-1], lr=s.fine_tune_lr(True), block_lr=s.lr,
                  distill_steps=s.distill_steps)


@dataclass
class RungStart:
    """Where a promoted plan continues from: the rung below's checkpoint and the IoUs so far."""

    checkpoint: str
    ious: dict[int, float] = field(default_factory=dict)


@dataclass
class HalvingEvaluator:
    """Trains a plan to its rung: from the warm start (rung 0), else from the checkpoint of the
    trial it continues (`TrialInfo.promotes`: plans repeat in a small or shared-config space, so
    a trial, not a plan, says where to go on from). `direct`: from the warm start straight to
    `rung` (a map search's finalists: the top rung)."""

    rung: int = 0
    starts: dict[int, RungStart] = field(default_factory=dict)  # promoted trial number → start
    name: str = "finetune"
    direct: bool = False

    def prepare(self, ctx: SearchContext, *, progress: bool, log: Callable[[str], None]) -> None:
        prepare_baseline(ctx, progress=progress, log=log)

    def evaluate(self, ctx: SearchContext, trial: TrialInfo) -> TrialOutcome:
        s, t0 = ctx.settings, time.perf_counter()
        below = self.rung and not self.direct  # continues from the rung below's checkpoint
        start = self.starts.get(trial.promotes) if below and trial.promotes is not None else None
        if below and start is None:
            raise TrialError(f"rung {self.rung}: trial {trial.number} continues trial "
                             f"{trial.promotes}, which is not promoted from rung {self.rung - 1}")
        done = s.rungs[self.rung - 1] if below else 0.0
        top = self.rung == len(s.rungs) - 1
        recipe = recipe_for(ctx)
        result = train_final(
            trial.plan, ctx.baseline_dir, recipe=recipe, seed=trial.seed,
            start=start.checkpoint if start else None, data=ctx.datasets,
            input_size=(s.input_size[0], s.tile_size, s.tile_size), batch_size=s.batch_size,
            epochs=s.rungs[self.rung] - done, schedule_start=done, schedule_epochs=s.rungs[-1],
            keep_best=top, patience=recipe.patience if top else None, progress=trial.progress,
            callbacks=ctx.deadline_callbacks())
        metrics = dict(result.metrics)
        if not math.isfinite(float(metrics.get("iou", math.nan))):
            raise TrialError(f"non-finite training result (loss={metrics.get('loss')})")
        ious = {**(start.ious if start else {}), self.rung: float(metrics["iou"])}
        recorded = {k: float(metrics[k]) for k in RECORDED_METRICS if k in metrics}
        recorded.update({f"iou_rung{r}": v for r, v in ious.items()}, rung_epochs=s.rungs[self.rung])
        return finish_trial(ctx, trial, result.model.eval(), metrics, recorded, t0)


# --- promotion between rungs --------------------------------------------------------------------


def rung_trials(study: optuna.Study, rung: int) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(RUNG) == rung and not t.user_attrs.get("infeasible")]


def promotions(study: optuna.Study, ctx: SearchContext, rung: int) -> list[FrozenTrial]:
    """The trials of rung `rung - 1` promoted to `rung`: chosen once (MO-ASHA's rule over IoU
    and the first cost objective) and stored with the study, so a resumed search promotes the
    same. The unconverted reference always goes on: at the top rung it is the paired baseline,
    trained by the same recipe and epochs as the front."""
    below = {t.number: t for t in rung_trials(study, rung - 1)}
    stored = study.user_attrs.get(PROMOTED_ATTR.format(rung))
    if stored is not None:
        return [below[n] for n in stored if n in below]
    pool = list(below.values())
    costs = [o for o in ctx.settings.objectives if o != "iou"]
    losses = loss_rows([t.user_attrs["iou"] for t in pool],
                       [t.user_attrs[costs[0]] for t in pool]) if costs else None
    k = max(1, len(pool) // ctx.settings.eta)
    chosen = [pool[i] for i in promote(losses, k)] if losses is not None else pool[:k]
    chosen += [t for t in pool if t.user_attrs.get("reference") == "baseline" and t not in chosen]
    study.set_user_attr(PROMOTED_ATTR.format(rung), [t.number for t in chosen])
    return chosen


def enqueue(study: optuna.Study, chosen: Sequence[FrozenTrial], rung: int) -> int:
    """Queue each promoted trial not yet trained, queued or running at `rung`."""
    covered = {t.user_attrs.get("promotes") for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING))
        if t.user_attrs.get(RUNG) == rung}
    queued = 0
    for t in chosen:
        if t.number in covered:
            continue
        attrs: dict[str, Any] = {"promotes": t.number, RUNG: rung}
        if t.user_attrs.get("reference"):
            attrs["reference"] = t.user_attrs["reference"]
        study.enqueue_trial(dict(t.params), user_attrs=attrs, skip_if_exists=False)
        queued += 1
    return queued


def starts_of(chosen: Sequence[FrozenTrial], root: Path) -> dict[int, RungStart]:
    """Each promoted trial's checkpoint and rung IoUs so far, by its number."""
    out = {}
    for t in chosen:
        ious = {int(k.removeprefix("iou_rung")): float(v) for k, v in t.user_attrs.items()
                if k.startswith("iou_rung")}
        folder = resolve_checkpoint(t.user_attrs.get("checkpoint"), root)
        out[t.number] = RungStart(str(folder), ious)
    return out


# --- the strategy -------------------------------------------------------------------------------


def run_halving(ctx: SearchContext, study: optuna.Study, backend: Any, console: Console,
                progress: bool) -> None:
    """Rung 0 on `trials` sampled plans, then each rung on the best 1/eta of the one below."""
    if not isinstance(ctx.evaluator, (FineTuneEvaluator, HalvingEvaluator)):
        raise CubesearchError("--strategy halving trains plans rung by rung with cubesearch's "
                              "trainer (--evaluator finetune)")
    s = ctx.settings
    last = len(s.rungs) - 1
    ctx.evaluator = HalvingEvaluator(rung=0)
    ctx.phase = Phase(f"rung 0 ({s.rungs[0]:g} ep)", s.trials, scored=last > 0, rung=0)
    run_phase(ctx, study, backend, console, progress)
    for rung in range(1, last + 1):
        if ctx.out_of_time():  # a rung cut short promotes nothing: the resume finishes it first
            return
        chosen = promotions(study, ctx, rung)
        if not chosen:
            raise CubesearchError(f"no plan finished rung {rung - 1} within budget, so none can be "
                                  "promoted; raise --budget or --trials")
        queued = enqueue(study, chosen, rung)
        counts = TrialCounts.of(study)
        console.print(f"rung {rung} ({s.rungs[rung]:g} epochs): {len(chosen)} of "
                      f"{len(rung_trials(study, rung - 1))} plans promoted ({queued} queued)")
        ctx.evaluator = HalvingEvaluator(rung=rung, starts=starts_of(chosen, ctx.out))
        ctx.phase = Phase(f"rung {rung} ({s.rungs[rung]:g} ep)", len(chosen), scored=rung < last,
                          rung=rung, rejected_before=counts.rejected, queued_only=True)
        run_phase(ctx, study, backend, console, progress)
