"""Pareto front, hypervolume and plot files."""

from __future__ import annotations

import random

import pytest

from cubesearch.search.pareto import ParetoPoint, hypervolume, non_dominated, plot_pareto, sites_text


def P(trial, iou, gflops, feasible=True, label=""):
    return ParetoPoint(trial=trial, iou=iou, gflops=gflops, params=1000 + trial, label=label,
                       feasible=feasible)


def test_front_hand_example():
    pts = [P(0, 0.70, 10.0, label="baseline"), P(1, 0.72, 6.0), P(2, 0.60, 4.0), P(3, 0.65, 7.0),
           P(4, 0.90, 3.0, feasible=False), P(5, 0.60, 4.0)]
    front = non_dominated(pts)
    assert [p.trial for p in front] == [2, 1]  # 3 is beaten by 1; 0 by 1; 4 infeasible; 5 ties 2


def test_front_matches_brute_force():
    rng = random.Random(0)
    pts = [P(i, rng.random(), rng.uniform(1, 10)) for i in range(60)]
    front = {p.trial for p in non_dominated(pts)}
    brute = {p.trial for p in pts
             if not any(o.iou >= p.iou and o.gflops <= p.gflops and (o.iou, o.gflops) != (p.iou, p.gflops)
                        for o in pts)}
    assert front == brute


def test_hypervolume_by_hand():
    # reference (11 GFLOPs, IoU 0): two points make an L-shaped area.
    pts = [P(0, 0.5, 2.0), P(1, 0.8, 6.0)]
    expected = (11 - 2) * 0.5 + (11 - 6) * (0.8 - 0.5)
    assert hypervolume(pts, ref_gflops=11.0) == pytest.approx(expected)
    assert hypervolume(pts + [P(2, 0.4, 3.0)], ref_gflops=11.0) == pytest.approx(expected)
    assert hypervolume([P(3, 0.9, 12.0)], ref_gflops=11.0) == 0.0
    assert hypervolume([P(4, 0.9, 1.0, feasible=False)], ref_gflops=11.0) == 0.0


def test_plot_files_are_written(tmp_path):
    pts = [P(0, 0.70, 10.0, label="baseline"), P(1, 0.72, 6.0, label="fullcube"), P(2, 0.6, 4.0),
           P(3, 0.5, 12.0, feasible=False)]
    png, html = tmp_path / "pareto.png", tmp_path / "pareto.html"
    plot_pareto(pts, non_dominated(pts), png, html, budget_gflops=8.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = html.read_text()
    assert "Pareto front" in text and "baseline" in text and "plotly" in text.lower()


def test_plans_over_budget_are_not_drawn_as_failed_models(tmp_path, monkeypatch):
    """Rejected untrained, they have no IoU: not crosses at IoU 0, but a note in the legend."""
    import matplotlib.axes

    drawn, legend = [], []
    real_scatter, real_plot = matplotlib.axes.Axes.scatter, matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter",
                        lambda self, x, y, **kw: drawn.extend(zip(x, y, strict=True))
                        or real_scatter(self, x, y, **kw))
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **kw: legend.append(kw.get("label")) or real_plot(self, *a, **kw))
    pts = [P(0, 0.70, 10.0, label="baseline", feasible=False), P(1, 0.62, 3.0, label="fullcube"),
           P(2, 0.6, 4.0), P(3, 0.0, 12.0, feasible=False), P(4, 0.0, 9.0, feasible=False)]
    html = tmp_path / "pareto.html"
    plot_pareto(pts, non_dominated(pts), tmp_path / "pareto.png", html, budget_gflops=8.0)
    assert (12.0, 0.0) not in drawn and (9.0, 0.0) not in drawn
    assert (10.0, 0.70) in drawn  # the unconverted reference: trained though over budget
    assert "2 over budget: rejected untrained, not drawn" in legend
    assert "2 over budget: rejected untrained, not drawn" in html.read_text()


def test_a_plan_that_narrows_convs_says_so_beside_its_cube_sites():
    assert sites_text(5) == "5"
    assert sites_text(5, 3) == "5 + 3 narrowed"
    assert sites_text(0, 2) == "0 + 2 narrowed"
