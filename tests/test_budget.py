"""Budgets (cubesearch.cost.budget): every accepted form against its value, bad input against the one
message, and which cost a budget bounds given the objectives."""

from __future__ import annotations

import pytest

from cubesearch.core.errors import CubesearchError
from cubesearch.cost.budget import FORMS, Budget, budget_objective, parse, parse_flops, resolve_budget
from cubesearch.exporting.export import _budget_gflops
from cubesearch.search.pareto import ParetoPoint


@pytest.mark.parametrize("text, kind, value", [
    ("50GFLOPs", "flops", 50e9), ("50G", "flops", 50e9), ("5e10", "flops", 5e10),
    ("400MFLOPs", "flops", 400e6), ("1.5gflops", "flops", 1.5e9), (" 2T ", "flops", 2e12),
    ("3000", "flops", 3000.0), ("7kFLOP", "flops", 7000.0), ("3m", "flops", 3e6),
    ("25ms", "time", 25_000), ("25 ms", "time", 25_000), ("0.5s", "time", 500_000),
    ("2500us", "time", 2500), ("7µs", "time", 7), ("1.5MS", "time", 1500),
    ("60%", "relative", 0.6), ("12.5 %", "relative", 0.125), ("150%", "relative", 1.5)])
def test_each_form(text, kind, value):
    got_kind, got = parse(text)
    assert got_kind == kind and got == pytest.approx(value)


@pytest.mark.parametrize("text", ["fifty", "50 GB", "-5G", "", "25 min", "60 %%", "5e", "G50"])
def test_bad_input_names_the_accepted_forms(text):
    with pytest.raises(CubesearchError) as exc:
        parse(text)
    assert str(exc.value) == f"budget {text.strip()!r} is not understood; use {FORMS}"
    assert "50GFLOPs" in FORMS and "25ms" in FORMS and "60%" in FORMS


@pytest.mark.parametrize("text", ["0G", "0%", "0ms", "0"])
def test_zero_is_refused(text):
    with pytest.raises(CubesearchError, match=f"budget '{text}' must be positive"):
        parse(text)


def test_flops_from_each_form():
    assert parse_flops("60%", base_flops=1e10) == pytest.approx(6e9)
    assert parse_flops("50GFLOPs") == 50e9
    with pytest.raises(CubesearchError, match="'60%' is relative, but the model's FLOPs are unknown"):
        parse_flops("60%")
    with pytest.raises(CubesearchError, match="'25ms' is a time, but FLOPs are needed here"):
        parse_flops("25ms", base_flops=1e10)


def test_the_cost_a_budget_bounds():
    assert resolve_budget("25ms", ("iou", "latency")) == Budget("latency", 25_000, "25ms")
    assert resolve_budget("20ms", ("iou", "gflops", "latency")).objective == "latency"
    # relative: the first cost objective named
    b = resolve_budget("60%", ("iou", "latency"), base_flops=1e10, base_latency_us=50_000)
    assert b == Budget("latency", 30_000, "60%") and b.label() == "30.000 ms"
    b = resolve_budget("60%", ("iou", "gflops", "latency"), base_flops=1e10, base_latency_us=50_000)
    assert b.objective == "gflops" and b.value == pytest.approx(6e9) and b.label() == "6.000 GFLOPs"
    assert resolve_budget("60%", ("iou", "latency", "gflops"), base_flops=1e10,
                          base_latency_us=50_000).objective == "latency"
    # a FLOPs budget stays a FLOPs budget whatever the objectives
    assert resolve_budget("5GFLOPs", ("iou", "latency")) == Budget("gflops", 5e9, "5GFLOPs")
    assert budget_objective("60%", ("iou", "params")) == "gflops"


def test_budget_errors():
    with pytest.raises(CubesearchError, match="latency budget.*no latency"):
        resolve_budget("25ms", ("iou", "gflops"))
    with pytest.raises(CubesearchError, match="latency, which is unknown"):
        resolve_budget("50%", ("iou", "latency"), base_flops=1e9)
    with pytest.raises(CubesearchError, match="is not understood; use FLOPs"):
        budget_objective("fast", ("iou", "latency"))


def test_export_index_shows_a_flops_budget_only():
    base = ParetoPoint(trial=0, iou=0.5, gflops=10.0, params=1, sites_replaced=0, label="baseline")
    assert _budget_gflops("60%", base, ("iou", "gflops")) == pytest.approx(6.0)
    assert _budget_gflops("4GFLOPs", None, ("iou", "gflops")) == pytest.approx(4.0)
    # a latency budget, or a percentage of a latency, is no FLOPs figure
    assert _budget_gflops("60%", base, ("iou", "latency")) is None
    assert _budget_gflops("25ms", base, ("iou", "latency")) is None
    assert _budget_gflops("60%", None, ("iou", "gflops")) is None
