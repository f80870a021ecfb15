"""Plans from the map by integer programming: a multiple-choice knapsack, solved exactly.

Predicted IoU of a plan = the baseline's IoU + Σ ΔIoU of its cells (additive: each cell was
measured alone). Choosing the plan of highest predicted IoU under budgets is a multiple-choice
knapsack: one binary x[s, o] per (site, option), exactly one option per site (`keep` has Δ = 0
everywhere), and for each budgeted cost Σ Δcost · x ≤ budget − the unconverted model's cost.
`scipy.optimize.milp` (HiGHS, relative gap 0) solves it exactly, in milliseconds for hundreds of
cells; `sweep` solves it along a range of budgets: the predicted front.

The costs are additive too: the FLOPs and parameter Δs of Cube sites are exact (the cost model,
equal to fvcore), the latency Δs are the table's plain sum. Where a plan's exact cost may differ
from the sum (a latency correction, narrowed convs that meet), `choose` takes the exact cost of
the chosen plan (`exact`), and while it is over a budget, tightens that budget by the excess and
solves again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from cubesearch.core.errors import CubesearchError
from cubesearch.cost.budget import parse_cost_budget, parse_flops

COST_KEYS = {"gflops": "delta_gflops", "params": "delta_params", "latency": "delta_ms"}
BASE_KEYS = {"gflops": "base_gflops", "params": "base_params", "latency": "base_ms"}
UNITS = {"gflops": "GFLOPs", "params": "params", "latency": "ms"}
TIE_BREAK = 1e-7  # per unit of relative FLOPs: of two plans predicted equal, the cheaper
MAX_TIGHTENING = 8
MAX_UNBUILDABLE = 16  # plans excluded because they cannot be built, before giving up

Exact = Callable[[dict[str, str]], Mapping[str, float]]


@dataclass(frozen=True)
class Choice:
    """A plan the MILP chose: site → option name (every site, `keep` included), its predicted
    IoU and its costs (absolute: GFLOPs, params, ms)."""

    options: dict[str, str]
    predicted_iou: float
    costs: dict[str, float] = field(default_factory=dict)

    def changed(self) -> dict[str, str]:
        """The sites the plan changes (option other than keep)."""
        return {s: o for s, o in self.options.items() if o != "keep"}

    def to_dict(self) -> dict[str, Any]:
        return {"predicted_iou": self.predicted_iou, **self.costs, "sites": self.changed()}


class MapTable:
    """The map's cells as a knapsack: per site its options, ΔIoU and Δcosts."""

    def __init__(self, cells: Sequence[Mapping[str, Any]], baseline_iou: float,
                 base: Mapping[str, float | None]) -> None:
        self.baseline_iou = float(baseline_iou)
        self.base = {k: (None if v is None else float(v)) for k, v in base.items()}
        self.sites: list[str] = []
        for c in cells:
            if c["site"] not in self.sites:
                self.sites.append(c["site"])
        self.cells = list(cells)
        for site in self.sites:
            if not any(c["site"] == site and c["option"] == "keep" for c in self.cells):
                self.cells.append({"site": site, "option": "keep", "delta_iou": 0.0,
                                   **{k: 0.0 for k in COST_KEYS.values()}})
        self._row = {s: i for i, s in enumerate(self.sites)}

    @classmethod
    def from_map(cls, data: Mapping[str, Any]) -> MapTable:
        """From map.json's content (`baseline_iou`, `base_gflops`…, `cells`)."""
        return cls(data["cells"], data["baseline_iou"], {k: data.get(v) for k, v in BASE_KEYS.items()})

    def delta(self, cell: Mapping[str, Any], cost: str) -> float:
        value = cell.get(COST_KEYS[cost])
        if value is None and cell.get("kind") == "width":
            raise CubesearchError(f"a {cost} budget needs every cell's Δ{cost}, and a latency table "
                                  f"times no narrowed conv ({cell['site']} {cell['option']}): give a "
                                  "latency budget with a Cube-only space (e.g. default)")
        if value is None:
            raise CubesearchError(f"a {cost} budget needs every cell's Δ{cost}: the map has none "
                                  f"at {cell['site']} {cell['option']} (measure it with "
                                  "--latency-table FILE, a `cubesearch profile` table)")
        return float(value)

    def predict(self, options: Mapping[str, str]) -> Choice:
        """The additive prediction (IoU and costs) of site → option (unlisted sites keep)."""
        chosen = [c for c in self.cells if options.get(c["site"], "keep") == c["option"]]
        costs = {k: base + sum(float(c.get(COST_KEYS[k]) or 0.0) for c in chosen)
                 for k, base in self.base.items() if base is not None}
        full = {s: options.get(s, "keep") for s in self.sites}
        return Choice(full, self.baseline_iou + sum(float(c["delta_iou"]) for c in chosen), costs)

    def lowest(self, cost: str) -> float:
        """The lowest `cost` any plan has (each site at its cheapest option)."""
        base = self.base.get(cost)
        if base is None:
            raise CubesearchError(f"the map has no base {cost}")
        return base + sum(min(self.delta(c, cost) for c in self.cells if c["site"] == s)
                          for s in self.sites)

    def solve(self, limits: Mapping[str, float], exclude: Sequence[Mapping[str, str]] = ()
              ) -> Choice | None:
        """The plan of highest predicted IoU within `limits` (cost → absolute bound) other than
        those in `exclude` (site → option: no-good cuts); None if no plan meets them."""
        n = len(self.cells)
        gain = np.array([float(c["delta_iou"]) for c in self.cells])
        flops = np.array([float(c.get("delta_gflops") or 0.0) for c in self.cells])
        scale = abs(self.base.get("gflops") or 1.0)
        objective = -gain + TIE_BREAK * flops / scale
        one = np.zeros((len(self.sites), n))
        for j, c in enumerate(self.cells):
            one[self._row[c["site"]], j] = 1.0
        constraints = [LinearConstraint(one, 1.0, 1.0)]
        for cost, limit in limits.items():
            base = self.base.get(cost)
            if base is None:
                raise CubesearchError(f"a {cost} budget needs the model's {cost}, which the map lacks")
            norm = abs(base) or 1.0  # rows of order 1: HiGHS's tolerances are absolute
            row = np.array([self.delta(c, cost) for c in self.cells]) / norm
            constraints.append(LinearConstraint(row[None, :], -np.inf, (limit - base) / norm))
        for options in exclude:  # Σ x over the plan's changed cells ≤ their number − 1
            changed = {(s, o) for s, o in options.items() if o != "keep"}
            row = np.array([1.0 if (c["site"], c["option"]) in changed else 0.0 for c in self.cells])
            constraints.append(LinearConstraint(row[None, :], -np.inf, len(changed) - 1))
        res = milp(objective, integrality=np.ones(n), bounds=Bounds(0, 1), constraints=constraints,
                   options={"mip_rel_gap": 0.0})
        if res.x is None:
            return None
        picked = {self.cells[j]["site"]: self.cells[j]["option"] for j in range(n) if res.x[j] > 0.5}
        return self.predict(picked)


def choose(table: MapTable, limits: Mapping[str, float], exact: Exact | None = None) -> Choice | None:
    """`table.solve(limits)`, its costs replaced by `exact(options)` where given; while the exact
    cost is over a limit, that limit is tightened by the excess and the MILP solved again. A plan
    `exact` cannot build (it raises `CubesearchError`) is excluded and the MILP solved again."""
    bounds = dict(limits)
    unbuildable: list[dict[str, str]] = []
    for _ in range(MAX_TIGHTENING + MAX_UNBUILDABLE):
        choice = table.solve(bounds, unbuildable)
        if choice is None or exact is None:
            return choice
        try:
            costs = {**choice.costs, **exact(choice.options)}
        except CubesearchError:
            if len(unbuildable) >= MAX_UNBUILDABLE or not choice.changed():
                raise
            unbuildable.append(choice.changed())
            continue
        over = {k: costs[k] - limits[k] for k in limits if costs[k] > limits[k] * (1 + 1e-12)}
        if not over:
            return Choice(choice.options, choice.predicted_iou, costs)
        for k, excess in over.items():
            bounds[k] -= excess + abs(limits[k]) * 1e-9
    return None


def sweep(table: MapTable, cost: str, upper: float, *, points: int = 41,
          limits: Mapping[str, float] | None = None, exact: Exact | None = None) -> list[Choice]:
    """The predicted front: `choose` at `points` budgets on `cost` from the cheapest plan to
    `upper` (other `limits` held), distinct plans only, dominated ones dropped, cheapest first."""
    low = table.lowest(cost)
    if upper < low:
        return []
    found: dict[tuple[tuple[str, str], ...], Choice] = {}
    for b in np.linspace(low, upper, points):
        choice = choose(table, {**(limits or {}), cost: float(b)}, exact)
        if choice is not None:
            found.setdefault(tuple(sorted(choice.changed().items())), choice)
    ranked = sorted(found.values(), key=lambda c: (c.costs[cost], -c.predicted_iou))
    front: list[Choice] = []
    for c in ranked:
        if not front or c.predicted_iou > front[-1].predicted_iou + 1e-12:
            front.append(c)
    return front


def spread(front: Sequence[Choice], k: int, cost: str) -> list[Choice]:
    """`k` plans of `front` spread across its cost range (all of them if it has ≤ k)."""
    if len(front) <= k:
        return list(front)
    low, high = front[0].costs[cost], front[-1].costs[cost]
    picked: list[Choice] = []
    for target in np.linspace(low, high, k):
        rest = [c for c in front if c not in picked]
        picked.append(min(rest, key=lambda c: abs(c.costs[cost] - target)))
    return sorted(picked, key=lambda c: c.costs[cost])


def resolve_limits(budgets: Sequence[str], table: MapTable) -> dict[str, float]:
    """Budgets (`60%`, `12G`, `25ms`, `params:80%`…; `budget.parse_cost_budget`) → cost → bound
    in the table's units (GFLOPs, params, ms). Two budgets on one cost: the tighter."""
    limits: dict[str, float] = {}
    for text in budgets:
        cost, kind, value = parse_cost_budget(text)
        base = table.base.get(cost)
        if base is None:
            why = (" (give --latency-table FILE: a `cubesearch profile` table of this device)"
                   if cost == "latency" else "")
            raise CubesearchError(f"budget {text!r} bounds {cost}, which the map did not measure{why}")
        if kind == "relative":
            bound = base * value
        elif cost == "gflops":
            bound = parse_flops(text.partition(":")[2] or text) / 1e9
        else:
            bound = value / 1e3 if cost == "latency" else value  # µs → ms; params: a count
        limits[cost] = min(bound, limits.get(cost, math.inf))
    return limits


def unmet_message(table: MapTable, limits: Mapping[str, float]) -> str:
    """Why no plan meets `limits`: each budget against the lowest cost the map allows."""
    parts = [f"{cost} ≤ {bound:g} {UNITS[cost]} (the cheapest plan: {table.lowest(cost):g}, "
             f"the model: {table.base[cost]:g})" for cost, bound in limits.items()]
    return "no plan of the map meets the budget: " + "; ".join(parts)
