"""One trial, the same code whichever backend schedules it (as Optuna's `_run_trial`).

`price_trial` (driver) samples the plan and prices it; a plan over budget is finished there,
untrained. `evaluate_trial` (driver or worker) asks the evaluator for its `TrialOutcome`.
`record_outcome` (driver) writes it to the trial. `run_trial` is the three in one process.
"""

from __future__ import annotations

import optuna

from cubesearch.blocks import CubeConfig
from cubesearch.search.context import SearchContext
from cubesearch.search.objectives import plan_cost, recorded_costs
from cubesearch.search.record import RUNG, SCORED, WIDTHS, TrialOutcome, fail_reason, stored_checkpoint


def price_trial(ctx: SearchContext, trial: optuna.Trial
                ) -> tuple[dict[str, CubeConfig], tuple[float, ...] | None]:
    """Sample `trial`'s plan (define-by-run) and record its cost-model figures as user attributes.

    An over-budget plan (not a reference) is finished here, without training: it is recorded as
    infeasible and its objective values are returned. Otherwise returns (plan, None): train it.
    """
    sites_cfg = ctx.space.sample_plan(trial, ctx.searchable)
    reference = trial.user_attrs.get("reference", "")
    if reference == "baseline":  # the unconverted model, whatever the space's mode samples
        sites_cfg = {}
    cost = plan_cost(ctx, sites_cfg, trial.user_attrs.get(WIDTHS))  # a queued plan's narrowed convs
    trial.set_user_attr("plan", {name: cfg.to_dict() for name, cfg in sites_cfg.items()})
    trial.set_user_attr("sites_replaced", len(sites_cfg))
    trial.set_user_attr("gflops_estimate", cost["gflops"])
    trial.set_user_attr("constraint", cost["constraint"])
    trial.set_user_attr("feasible", bool(cost["feasible"]))
    if cost["feasible"] or reference:
        return sites_cfg, None
    # Over budget: rejected before any training; the sampler learns the boundary from the
    # constraint. The IoU value is a floor so the trial never joins a front.
    rejected = TrialOutcome(iou=0.0, costs={k: cost[k] for k in recorded_costs(ctx.settings.objectives)})
    trial.set_user_attr("infeasible", True)
    for key, value in rejected.costs.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("iou", 0.0)
    return sites_cfg, rejected.values(ctx.settings.objectives)


def evaluate_trial(ctx: SearchContext, sites_cfg: dict[str, CubeConfig], number: int,
                   promotes: int | None = None) -> TrialOutcome:
    """The evaluator's outcome of one plan within budget; raises when the trial fails.
    `promotes`: the trial of the rung below that a halving trial continues."""
    assert ctx.evaluator is not None, "the search's set-up chooses the evaluator"
    return ctx.evaluator.evaluate(ctx, ctx.trial_info(number, sites_cfg, promotes=promotes))


def record_outcome(ctx: SearchContext, trial: optuna.Trial, outcome: TrialOutcome) -> tuple[float, ...]:
    """Store an outcome as the trial's user attributes; return its objective values. A plan
    trained to a lower halving rung only is marked so, and a halving trial with its rung."""
    attrs = outcome.to_user_attrs()
    if ctx.phase is not None and ctx.phase.scored:
        attrs[SCORED] = True
    if ctx.phase is not None and ctx.phase.rung is not None:
        attrs[RUNG] = ctx.phase.rung
    if attrs.get("checkpoint"):  # absolute; readers re-root it at the study folder if it moved
        attrs["checkpoint"] = stored_checkpoint(attrs["checkpoint"], ctx.out)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return outcome.values(ctx.settings.objectives)


def run_trial(ctx: SearchContext, trial: optuna.Trial) -> tuple[float, ...]:
    """Sample a plan, price it, and evaluate it if it is within budget (or a reference)."""
    sites_cfg, values = price_trial(ctx, trial)
    if values is not None:
        return values
    try:
        outcome = evaluate_trial(ctx, sites_cfg, trial.number, trial.user_attrs.get("promotes"))
    except Exception as exc:
        trial.set_user_attr("fail_reason", fail_reason(exc))
        raise
    return record_outcome(ctx, trial, outcome)
