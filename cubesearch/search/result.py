"""What a search leaves: `SearchResult` (read from the study), `search.json` and the plot."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from cubesearch.core.helpers import atomic_write
from cubesearch.core.redact import mask_url
from cubesearch.search.context import SearchContext
from cubesearch.search.pareto import PRUNING_LABEL, ParetoPoint, non_dominated, plot_pareto
from cubesearch.search.record import TrialCounts, study_points
from cubesearch.search.settings import SearchSettings


@dataclass
class SearchResult:
    """What a search leaves: where the study is, every point, and the Pareto front."""

    study_name: str
    storage: str
    out: Path
    budget_gflops: float | None  # None under a latency budget
    baseline: ParetoPoint | None
    points: list[ParetoPoint]
    front: list[ParetoPoint]
    n_complete: int  # trained and evaluated (`--trials` counts these)
    n_failed: int
    n_rejected: int = 0  # over budget, rejected by the cost model without training
    budget_ms: float | None = None  # a latency budget (ms on the profiled device), else None
    device: dict[str, Any] | None = None  # the latency table's device fingerprint, if any
    study: optuna.Study | None = None
    scored: list[ParetoPoint] = field(default_factory=list)  # halving: plans ranked on a lower rung only

    @property
    def n_scored(self) -> int:
        return len(self.scored)

    def budget_label(self) -> str:
        """The budget as a front table's title shows it: `15.167 GFLOPs` or `25.000 ms`."""
        if self.budget_ms is not None:
            return f"{self.budget_ms:.3f} ms"
        return f"{self.budget_gflops:.3f} GFLOPs"

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study_name, "storage": mask_url(self.storage), "out": str(self.out),
            "budget_gflops": self.budget_gflops, "budget_ms": self.budget_ms,
            "device": self.device, "trials_complete": self.n_complete,
            "trials_rejected": self.n_rejected, "trials_failed": self.n_failed,
            "plans_scored": self.n_scored,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "pareto": [p.to_dict() for p in self.front],
        }


def collect_result(study: optuna.Study, ctx: SearchContext) -> SearchResult:
    points = study_points(study, ctx.out)
    baseline = next((p for p in points if p.label == "baseline"), None)
    counts = TrialCounts.of(study)
    budget = ctx.budget
    budget_ms = budget.value / 1e3 if budget is not None and budget.objective == "latency" else None
    return SearchResult(study_name=study.study_name, storage=ctx.settings.storage_url(), out=ctx.out,
                        budget_gflops=ctx.budget_flops / 1e9 if ctx.budget_flops != float("inf") else None,
                        baseline=baseline, points=points,
                        budget_ms=budget_ms,
                        device=ctx.latency.fingerprint.to_dict() if ctx.latency else None,
                        front=non_dominated([p for p in points if p.label != PRUNING_LABEL],
                                            ctx.settings.objectives), n_complete=counts.trained,
                        n_failed=counts.failed, n_rejected=counts.rejected, study=study,
                        scored=study_points(study, ctx.out, scored=True))


def plot_labels(settings: SearchSettings) -> tuple[str, str]:
    """The legend of the plot's cloud and trials: a halving search's cloud is its lower rungs."""
    if settings.strategy == "halving" and len(settings.rungs) > 1:
        return (f"ranked on {settings.rungs[0]:g} epochs (lower rungs)",
                f"trained {settings.rungs[-1]:g} epochs (final recipe)")
    return ("scored, not trained", "trials")


def write_summary(result: SearchResult, ctx: SearchContext) -> None:
    """`search.json` and the plot next to the study, written atomically."""
    atomic_write(ctx.out / "search.json", json.dumps(result.to_dict(), indent=2, default=str))
    plot_pareto(result.points, result.front, ctx.out / "pareto.png", None,
                title=f"{ctx.settings.model}: IoU vs GFLOPs", budget_gflops=result.budget_gflops,
                cloud=result.scored, labels=plot_labels(ctx.settings))
    if result.device is not None and "latency" in ctx.settings.objectives:  # a latency axis
        plot_pareto(result.points, result.front, ctx.out / "pareto-latency.png", None,
                    title=f"{ctx.settings.model}: IoU vs latency ({result.device.get('name')})",
                    axis="latency", budget=result.budget_ms)
