"""The IoU-vs-GFLOPs trade-off: the non-dominated set, its hypervolume, and the plot (paper Fig. 8)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The label of a uniform channel-pruning reference (`search --strategy map` trains them at the
# finalists' budgets): drawn as its own curve, never part of the search's front
PRUNING_LABEL = "pruning"


@dataclass
class ParetoPoint:
    """One evaluated model: a trial of a study (or the baseline / FullCube reference)."""

    trial: int
    iou: float
    gflops: float
    params: int
    sites_replaced: int = 0  # Cube blocks
    sites_narrowed: int = 0  # convs narrowed to a kept fraction of their channels (`Plan.widths`)
    label: str = ""
    feasible: bool = True
    plan_path: str | None = None
    checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sites_text(replaced: int, narrowed: int = 0) -> str:
    """`5` Cube sites, or `5 + 3 narrowed` when the plan also narrows convs."""
    return f"{replaced}" + (f" + {narrowed} narrowed" if narrowed else "")


def objective_value(p: ParetoPoint, name: str) -> float:
    """A cost objective's value: a field (gflops, params) or a recorded extra (latency, in ms)."""
    value = getattr(p, name, None) if name in ParetoPoint.__dataclass_fields__ else p.extra.get(name)
    return float("inf") if value is None else float(value)


def non_dominated(points: Sequence[ParetoPoint], objectives: Sequence[str] = ("iou", "gflops")
                  ) -> list[ParetoPoint]:
    """Feasible points no other feasible point beats on every objective (IoU up, others down).

    Sorted by GFLOPs. Ties (equal on every objective) keep the earliest trial.
    """
    pts = [p for p in points if p.feasible]

    def key(p: ParetoPoint) -> tuple[float, ...]:  # all objectives as "lower is better"
        return tuple(-p.iou if o == "iou" else objective_value(p, o) for o in objectives)

    front = []
    for p in pts:
        kp = key(p)
        dominated = False
        for other in pts:
            ko = key(other)
            if other is p:
                continue
            better_or_equal = all(a <= b for a, b in zip(ko, kp, strict=True))
            if better_or_equal and (ko != kp or other.trial < p.trial):
                dominated = True
                break
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: (p.gflops, -p.iou))


def hypervolume(points: Sequence[ParetoPoint], ref_gflops: float, ref_iou: float = 0.0) -> float:
    """Area dominated by the feasible points in (GFLOPs ↓, IoU ↑), bounded by the reference point.

    The benchmark's reference is (baseline GFLOPs × 1.1, IoU 0).
    """
    losses = np.array([[p.gflops, -p.iou] for p in points if p.feasible], dtype=float)
    return loss_hypervolume(losses.reshape(-1, 2), np.array([ref_gflops, -ref_iou], dtype=float))


def loss_hypervolume(losses: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume of rows of "lower is better" objectives strictly inside `reference` (Optuna's
    routine, the one its samplers use)."""
    from optuna._hypervolume import compute_hypervolume

    inside = losses[np.all(losses < reference, axis=1)]
    return float(compute_hypervolume(inside, reference)) if len(inside) else 0.0


def plot_pareto(points: Sequence[ParetoPoint], front: Sequence[ParetoPoint], png: Path | None,
                html: Path | None, *, title: str = "IoU vs GFLOPs",
                budget_gflops: float | None = None, axis: str = "gflops",
                budget: float | None = None, cloud: Sequence[ParetoPoint] = (),
                labels: tuple[str, str] = ("scored, not trained", "trials")) -> None:
    """Every trained plan as a dot, the front as a line, baseline and FullCube marked, front
    labelled. Plans over budget were rejected untrained (their IoU is no measurement): they are
    left out, and the legend says how many (the references are trained even over budget).

    `axis`: the cost on x, `gflops` (the default) or another recorded cost such as `latency`
    (ms, measured); `budget` is the budget line in that cost (`budget_gflops` for GFLOPs).
    `cloud`: plans scored, not trained (a halving search's lower rungs), drawn faintly under
    the trials; `labels`: the legend's for the cloud and trials."""
    if axis != "gflops":
        budget_gflops = budget
        points = [p for p in points if math.isfinite(objective_value(p, axis))]
        front = sorted((p for p in front if math.isfinite(objective_value(p, axis))),
                       key=lambda p: objective_value(p, axis))
    refs = {p.label: p for p in points if p.label in ("baseline", "fullcube")}
    pruning = sorted((p for p in points if p.label == PRUNING_LABEL), key=lambda p: objective_value(p, axis))
    others = [p for p in points if p.label not in refs and p.label != PRUNING_LABEL]
    view = _View(axis, title, refs, [p for p in others if p.feasible],
                 sum(not p.feasible for p in others), list(front), pruning)
    if png is not None:
        _plot_png(view, png, [p for p in cloud if p.feasible], labels, budget_gflops)
    if html is not None:
        _plot_html(view, html)


@dataclass
class _View:
    """What both plots draw: the trained plans (the references apart) and the front."""

    axis: str
    title: str
    refs: dict[str, ParetoPoint]
    trained: list[ParetoPoint]
    rejected: int  # plans over budget, never trained: not drawn
    front: list[ParetoPoint]
    pruning: list[ParetoPoint]  # uniform channel-pruning references: their own curve

    def x(self, pts: Sequence[ParetoPoint]) -> list[float]:
        return [objective_value(p, self.axis) for p in pts]

    @property
    def unit(self) -> str:
        return {"gflops": "GFLOPs", "latency": "ms", "params": "parameters"}.get(self.axis, self.axis)

    @property
    def rejected_note(self) -> str:
        return f"{self.rejected} over budget: rejected untrained, not drawn"


def _plot_png(view: _View, png: Path, scored: Sequence[ParetoPoint], labels: tuple[str, str],
              budget: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if scored:
        ax.scatter(view.x(scored), [p.iou for p in scored], s=6, c="#f2b36b", alpha=0.5,
                   label=f"{labels[0]} ({len(scored)})")
    if view.trained:
        ax.scatter(view.x(view.trained), [p.iou for p in view.trained], s=18, c="#9ab", label=labels[1])
    if view.rejected:  # a legend line only: an untrained plan has no IoU to draw
        ax.plot([], [], " ", label=view.rejected_note)
    if view.front:
        ax.plot(view.x(view.front), [p.iou for p in view.front], "-o", c="#d62728", ms=6,
                label="Pareto front", drawstyle="steps-post")
        for p in view.front:
            ax.annotate(f"#{p.trial}", (objective_value(p, view.axis), p.iou),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    if view.pruning:
        ax.plot(view.x(view.pruning), [p.iou for p in view.pruning], "--s", c="#7f7f7f", ms=5,
                label=f"uniform channel pruning ({len(view.pruning)})")
    styles = {"baseline": ("s", "#1f77b4"), "fullcube": ("D", "#2ca02c")}
    for label, p in view.refs.items():
        marker, colour = styles[label]
        over = "" if p.feasible else ", over budget"
        ax.scatter(view.x([p]), [p.iou], marker=marker, s=70, c=colour, zorder=5,
                   label=f"{label} (#{p.trial}{over})", edgecolors="black")
    if budget is not None:
        ax.axvline(budget, ls="--", c="#888", lw=1, label="budget")
    ax.set_xlabel("GFLOPs (fvcore, 1 MAC = 1 FLOP)" if view.axis == "gflops" else
                  "latency, ms (measured on the profiled device)" if view.axis == "latency" else view.unit)
    ax.set_ylabel("IoU (building)")
    ax.set_title(view.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def _plot_html(view: _View, html: Path) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()

    def trace(pts: Sequence[ParetoPoint], name: str, **kw: Any) -> None:
        fig.add_trace(go.Scatter(
            x=view.x(pts), y=[p.iou for p in pts], name=name,
            text=[f"trial {p.trial}<br>{sites_text(p.sites_replaced, p.sites_narrowed)} sites"
                  f"<br>{p.params:,} params" for p in pts],
            hovertemplate="%{text}<br>%{x:.3f} " + view.unit + ", IoU %{y:.4f}", **kw))

    front_ids = {p.trial for p in view.front}
    trace([p for p in view.trained if p.trial not in front_ids], "trials", mode="markers")
    trace(view.front, "Pareto front", mode="lines+markers", line={"shape": "hv"})
    for label, p in view.refs.items():
        trace([p], label, mode="markers", marker={"size": 12, "symbol": "diamond"})
    title = view.title + (f" ({view.rejected_note})" if view.rejected else "")
    fig.update_layout(title=title, xaxis_title=view.unit, yaxis_title="IoU (building)")
    html.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(html), include_plotlyjs=True)
