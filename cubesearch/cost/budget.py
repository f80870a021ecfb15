"""Budgets: the one parser of `--budget` (and of export's `--select under:…`).

A budget is FLOPs (`50GFLOPs`, `50G`, `5e10`, `400MFLOPs`), a time (`25ms`, `0.5s`, `2500us`:
a latency budget, which needs a latency objective), or a percentage (`60%`) of the unconverted
model's value of the *first cost objective named* in `--objectives` (`iou,latency` → 60 % of its
latency; `iou,gflops,latency` → 60 % of its FLOPs; no cost objective → of its FLOPs).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cubesearch.core.errors import CubesearchError

FORMS = ("FLOPs (50GFLOPs, 50G, 5e10, 400MFLOPs), a time (25ms, 0.5s, 2500us) "
         "or a percentage of the unconverted model (60%)")
BUDGETED = ("gflops", "latency")  # the costs a budget can bound
TIME_UNITS = {"us": 1.0, "µs": 1.0, "μs": 1.0, "ms": 1e3, "s": 1e6}  # → microseconds
FLOP_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}

Kind = Literal["flops", "time", "relative"]
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"
_PATTERNS: dict[Kind, re.Pattern[str]] = {  # tried in this order
    "relative": re.compile(_NUMBER + r"\s*%"),
    "time": re.compile(_NUMBER + r"\s*(us|µs|μs|ms|s)", re.IGNORECASE),
    "flops": re.compile(_NUMBER + r"\s*([kKmMgGtT]?)(?:FLOPs?|flops?)?"),
}


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


def parse(text: str) -> tuple[Kind, float]:
    """`text` → (`flops`, FLOPs) | (`time`, microseconds) | (`relative`, fraction of 1).

    The one place budget text is read; every form it does not know gets the same message."""
    raw = str(text).strip()
    for k, pattern in _PATTERNS.items():
        m = pattern.fullmatch(raw)
        if m is None:
            continue
        number = float(m.group(1))
        if k == "relative":
            value = number / 100
        elif k == "time":
            value = number * TIME_UNITS[m.group(2).lower()]
        else:
            value = number * FLOP_UNITS[m.group(2).lower()]
        if value <= 0:
            raise CubesearchError(f"budget {raw!r} must be positive")
        return k, value
    raise CubesearchError(f"budget {raw!r} is not understood; use {FORMS}")


def parse_flops(text: str, base_flops: float | None = None) -> float:
    """A FLOPs budget, or a percentage of `base_flops`, → FLOPs."""
    k, value = parse(text)
    if k == "time":
        raise CubesearchError(f"budget {str(text).strip()!r} is a time, but FLOPs are needed here; use "
                              "FLOPs (50GFLOPs, 50G, 5e10, 400MFLOPs) or a percentage (60%)")
    if k == "relative":
        if base_flops is None:
            raise CubesearchError(f"budget {str(text).strip()!r} is relative, but the model's FLOPs "
                                  "are unknown")
        return base_flops * value
    return value


def budget_objective(text: str, objectives: Sequence[str]) -> str:
    """Which cost `text` bounds, given the study's objectives (no model needed)."""
    k, _ = parse(text)
    if k == "time":
        if "latency" not in objectives:
            raise CubesearchError(
                f"budget {text!r} is a latency budget, but the objectives "
                f"({','.join(objectives)}) have no latency: use --objectives iou,latency (or "
                "iou,gflops,latency), or a FLOPs budget such as 50GFLOPs")
        return "latency"
    if k == "relative":
        return next((o for o in objectives if o in BUDGETED), "gflops")
    return "gflops"


def resolve_budget(text: str, objectives: Sequence[str] = ("iou", "gflops"), *,
                   base_flops: float | None = None, base_latency_us: float | None = None) -> Budget:
    """`text` as a `Budget` on the cost it bounds (relative: of the unconverted model's value)."""
    objective = budget_objective(text, objectives)
    k, value = parse(text)
    if objective == "gflops":
        return Budget("gflops", parse_flops(text, base_flops), str(text))
    if k == "time":
        return Budget("latency", value, str(text))
    if base_latency_us is None:
        raise CubesearchError(f"budget {text!r} is relative to the latency, which is unknown "
                              "(profile the model first: cubesearch profile)")
    return Budget("latency", base_latency_us * value, str(text))


COSTS = ("gflops", "params", "latency")  # what a plan chooser (the site map's MILP) can bound


def parse_cost_budget(text: str) -> tuple[str, Kind, float]:
    """A budget on one named cost: `COST:BUDGET` (`params:80%`, `params:1.5M`, `gflops:12G`,
    `latency:25ms`), or a plain budget, whose form names its cost (a time: latency; FLOPs or a
    percentage: gflops). → (cost, kind, value), the value as `parse` gives it."""
    raw = str(text).strip()
    cost, sep, rest = raw.partition(":")
    if not sep:
        kind, value = parse(raw)
        return ("latency" if kind == "time" else "gflops"), kind, value
    cost = cost.strip().lower()
    if cost not in COSTS:
        raise CubesearchError(f"budget {raw!r}: unknown cost {cost!r} (choose from {', '.join(COSTS)})")
    kind, value = parse(rest)
    if (kind == "time") != (cost == "latency") and kind != "relative":
        what = "a time (25ms)" if cost == "latency" else "a count (12G, 1.5M)"
        raise CubesearchError(f"budget {raw!r}: {cost} takes {what} or a percentage (80%)")
    return cost, kind, value
