"""Budgets in time: `25ms`, `0.5s`, `2500us`, and which cost a relative `60%` budget applies to.

`--budget` is a FLOPs budget (`50GFLOPs`, `5e10`, see `cubesearch.space.parse_budget`), a
latency budget (a time), or a percentage of the unconverted model's value of the *first cost
objective named* in `--objectives` (`iou,latency` → 60 % of its latency; `iou,gflops,latency` →
60 % of its FLOPs).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cubesearch.errors import CubesearchError

TIME_UNITS = {"us": 1.0, "µs": 1.0, "μs": 1.0, "ms": 1e3, "s": 1e6}
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"
_TIME = re.compile(_NUMBER + r"\s*(us|µs|μs|ms|s)", re.IGNORECASE)
_PCT = re.compile(_NUMBER + r"\s*%")
BUDGETED = ("gflops", "latency")  # the costs a budget can bound


@dataclass(frozen=True)
class Budget:
    """What the budget bounds (`gflops`: FLOPs; `latency`: microseconds) and the bound."""

    objective: str
    value: float  # FLOPs, or microseconds
    text: str

    def label(self) -> str:
        if self.objective == "latency":
            return f"{self.value / 1e3:.3f} ms"
        return f"{self.value / 1e9:.3f} GFLOPs"


def is_time(text: str) -> bool:
    return _TIME.fullmatch(str(text).strip()) is not None


def is_relative(text: str) -> bool:
    return _PCT.fullmatch(str(text).strip()) is not None


def parse_time(text: str) -> float:
    """`25ms`, `25 ms`, `0.5s`, `2500us` → microseconds."""
    m = _TIME.fullmatch(str(text).strip())
    if not m:
        raise CubesearchError(f"budget {text!r} is not a time (e.g. 25ms, 0.5s, 2500us)")
    value = float(m.group(1)) * TIME_UNITS[m.group(2).lower()]
    if value <= 0:
        raise CubesearchError(f"budget {text!r} must be positive")
    return value


def budget_objective(text: str, objectives: Sequence[str]) -> str:
    """Which cost `text` bounds, given the study's objectives (no model needed)."""
    costs = [o for o in objectives if o in BUDGETED]
    if is_time(text):
        if "latency" not in objectives:
            raise CubesearchError(
                f"budget {text!r} is a latency budget, but the objectives "
                f"({','.join(objectives)}) have no latency: use --objectives iou,latency (or "
                "iou,gflops,latency), or a FLOPs budget such as 50GFLOPs")
        return "latency"
    if is_relative(text):
        return costs[0] if costs else "gflops"
    return "gflops"


def resolve_budget(text: str, objectives: Sequence[str], *, base_flops: float | None = None,
                   base_latency_us: float | None = None) -> Budget:
    """`text` as a `Budget` on the cost it bounds (relative: of the unconverted model's value)."""
    from cubesearch.space import parse_budget

    objective = budget_objective(text, objectives)
    if objective == "latency":
        if is_time(text):
            return Budget("latency", parse_time(text), str(text))
        if base_latency_us is None:
            raise CubesearchError(f"budget {text!r} is relative to the latency, which is unknown "
                                  "(profile the model first: cubesearch profile)")
        return Budget("latency", parse_budget(text, base_latency_us), str(text))
    return Budget("gflops", parse_budget(text, base_flops), str(text))
