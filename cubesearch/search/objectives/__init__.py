"""The search's objectives: IoU (up) and the cost objectives (down), from a table.

A cost objective says how to *estimate* its value from a plan (before anything is built: the
budget check and a rejected plan's record use it) and how to *measure* it on the evaluated model
(what the study records for a trained trial). Adding one, e.g. latency, is one entry in
`COST_OBJECTIVES` (`register_cost`): the backends, the record and the CLI's `--objectives` read
the table. `latency`: the latency objective's estimate and measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from cubesearch.blocks import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.cost.pricing import count_flops, count_params, plan_flops_params
from cubesearch.models.load import load_model
from cubesearch.search.context import SearchContext
from cubesearch.search.objectives import latency

IOU = "iou"


@dataclass(frozen=True)
class CostObjective:
    """A cost to minimise: estimated from a plan, measured on the evaluated model."""

    name: str
    estimate: Callable[[SearchContext, dict[str, CubeConfig]], float]
    measure: Callable[[SearchContext, nn.Module], float]


def _gflops_estimate(ctx: SearchContext, sites_cfg: dict[str, CubeConfig]) -> float:
    return ctx.cost.flops(sites_cfg) / 1e9


def _gflops_measure(ctx: SearchContext, model: nn.Module) -> float:
    return count_flops(model, ctx.settings.input_size) / 1e9  # fvcore, eval mode: the truth


COST_OBJECTIVES: dict[str, CostObjective] = {
    "gflops": CostObjective("gflops", _gflops_estimate, _gflops_measure),
    "params": CostObjective("params", lambda ctx, plan: int(ctx.cost.params(plan)),
                            lambda ctx, model: count_params(model)),
    "latency": CostObjective("latency", latency.estimate_ms, latency.measure_ms),
}


def register_cost(objective: CostObjective) -> None:
    """Make `objective.name` usable in `--objectives` (e.g. `iou,latency`)."""
    COST_OBJECTIVES[objective.name] = objective


def direction(name: str) -> str:
    """Optuna's direction of an objective."""
    return "maximize" if name == IOU else "minimize"


def parse_objectives(text: str | Sequence[str]) -> tuple[str, ...]:
    """`iou,gflops` → ("iou", "gflops"); iou and at least one cost, each once."""
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    bad = [n for n in names if n != IOU and n not in COST_OBJECTIVES]
    if bad or IOU not in names or len(names) < 2 or len(set(names)) != len(names):
        costs = ", ".join(COST_OBJECTIVES)
        raise CubesearchError(
            f"objectives {','.join(names)!r}: give iou and at least one of {costs}, "
            "each once (e.g. iou,gflops or iou,gflops,params)")
    return tuple(names)


def recorded_costs(objectives: Sequence[str]) -> list[str]:
    """The costs a trial records: gflops and params always (the Pareto table shows them), and
    any other cost objective of the study."""
    return list(dict.fromkeys(["gflops", "params", *(o for o in objectives if o != IOU)]))


def plan_cost(ctx: SearchContext, sites_cfg: dict[str, CubeConfig],
              widths: Mapping[str, float] | None = None) -> dict[str, float]:
    """Cost-model figures of a plan; microseconds, no model built. The budget decides `feasible`
    and `constraint` (relative cost over budget, ≤ 0 is feasible): FLOPs, or the latency model's
    prediction under a latency budget. A plan that narrows convs (`widths`) is counted on the
    built model (`plan_flops_params`: the cost model prices Cube-only plans)."""
    if widths:
        figures = _built_figures(ctx, sites_cfg, widths)
        flops = int(round(figures["gflops"] * 1e9))
    else:
        flops = ctx.cost.flops(sites_cfg)
        figures = {name: COST_OBJECTIVES[name].estimate(ctx, sites_cfg)
                   for name in recorded_costs(ctx.settings.objectives)}
    used, bound = float(flops), ctx.budget_flops
    if ctx.budget is not None and ctx.budget.objective == "latency":
        used, bound = figures["latency"] * 1e3, ctx.budget.value  # µs
    return {**figures, "flops": flops, "feasible": used <= bound,
            "constraint": (used - bound) / bound}


def _built_figures(ctx: SearchContext, sites_cfg: dict[str, CubeConfig],
                   widths: Mapping[str, float]) -> dict[str, float]:
    """GFLOPs and params of a plan with narrowed convs, on the built model (fvcore)."""
    extra = [o for o in recorded_costs(ctx.settings.objectives) if o not in ("gflops", "params")]
    if extra:
        raise CubesearchError(f"a plan with narrowed convs has no {extra[0]} estimate (the latency "
                              "table times Cube blocks and convs, not narrowed convs); use "
                              "--objectives iou,gflops or iou,gflops,params")
    s = ctx.settings
    plan = ctx.plan_for(sites_cfg).model_copy(update={"widths": dict(widths)})
    flops, params = plan_flops_params(lambda: load_model(s.model, **s.model_args).eval(), plan)
    return {"gflops": flops / 1e9, "params": params}


def measure_costs(ctx: SearchContext, model: nn.Module) -> dict[str, float]:
    """Every recorded cost of the evaluated model (in eval mode)."""
    model.eval()
    return {name: COST_OBJECTIVES[name].measure(ctx, model)
            for name in recorded_costs(ctx.settings.objectives)}
