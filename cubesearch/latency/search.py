"""Latency in a search: the `latency` cost objective, a latency budget, the study's device.

What the search package calls (small hooks there, the logic here):

- `setup(settings, model, report, space, searchable, cost, log)` → (LatencyModel or None,
  Budget): loads the latency table (`--latency-table`, default OUT/latency.json), profiles this
  device into it when it lacks the model or the space's configs, refuses a table measured on
  another device unless `--reprofile`, resolves `--budget` (`25ms`, `60%` of the first cost
  objective named, FLOPs) and refuses a budget below the fastest (or cheapest) plan.
- `estimate_ms(ctx, plan)`: the latency model's prediction (a plan's price before training).
- `measure_ms(ctx, model)`: the evaluated model timed whole in deploy form on this device (the
  table's threads, batch, dtype and layout), what a trained trial records.
- `check_study_device(study, ctx)`: a study records its device fingerprint; resuming on another
  device is refused unless `--reprofile`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cubesearch.budget import Budget, budget_objective, resolve_budget
from cubesearch.errors import CubesearchError
from cubesearch.latency.fingerprint import Fingerprint, device_fingerprint
from cubesearch.latency.model import LatencyModel
from cubesearch.latency.table import LatencyTable, model_key

STUDY_ATTR = "device"


def needs_latency(settings: Any) -> bool:
    return "latency" in settings.objectives or budget_objective(
        settings.budget, settings.objectives) == "latency"


def table_path(settings: Any) -> Path:
    return Path(getattr(settings, "latency_table", None) or Path(settings.out) / "latency.json")


def current_fingerprint(like: Fingerprint | None = None) -> Fingerprint:
    """This machine, measured the way `like` was (threads, batch, dtype); a CPU if no table."""
    import os

    if like is None:
        return device_fingerprint("cpu")
    if like.device == "cuda" and not torch.cuda.is_available():
        return device_fingerprint("cpu", batch=like.batch)
    fits = like.device == "cpu" and 1 <= like.threads <= (os.cpu_count() or 1)
    return device_fingerprint(like.device, threads=like.threads if fits else None,
                              batch=like.batch, dtype=like.dtype)


def load_latency(settings: Any, model: nn.Module, report: Any, space: Any, *,
                 log: Callable[[str], None] | None = None) -> LatencyModel:
    """The latency model of `settings.model` on this device (profiling what is missing)."""
    from cubesearch.latency.profile import profile_latency, site_configs, stats_need_calibration

    path = table_path(settings)
    reprofile = bool(getattr(settings, "reprofile", False))
    if path.exists():
        table = LatencyTable.load(path)
        here = current_fingerprint(table.fingerprint)
        if table.fingerprint != here:
            if not reprofile:
                diffs = "; ".join(table.fingerprint.differences(here))
                raise CubesearchError(
                    f"latency table {path} was measured on another device ({diffs}); add "
                    "--reprofile to measure this one (or --latency-table FILE)")
            table = LatencyTable(fingerprint=here)
    else:
        table = LatencyTable(fingerprint=current_fingerprint())
    key = model_key(settings.model, settings.input_size, settings.num_classes)
    searchable = space.searchable(report.sites)
    missing = key not in table.models
    if not missing:  # every op the space needs at every searchable site?
        lat = LatencyModel(table, key)
        configs = site_configs(space, searchable)
        try:
            for s in searchable:
                lat.conv_us(s.name)
                for cfg in configs[s.name]:
                    lat.block_us(s.name, cfg)
        except CubesearchError:
            missing = True
    if missing:
        if log:
            log(f"latency: profiling {settings.model} on {table.fingerprint.label()} into {path} "
                f"(space {space.name!r}; once per device)")
        fp = table.fingerprint
        device = torch.device("cuda" if fp.device == "cuda" else "cpu")
        dtype = getattr(torch, fp.dtype)
        profile_latency(model, report, space, spec=settings.model, table=table, device=device,
                        dtype=dtype, num_classes=settings.num_classes,
                        calibrate=4 if stats_need_calibration(table, key) else 0)
        table.save(path)
    return LatencyModel(table, key)


def setup(settings: Any, model: nn.Module, report: Any, space: Any, searchable: Sequence[Any],
          cost: Any, *, log: Callable[[str], None] | None = None
          ) -> tuple[LatencyModel | None, Budget]:
    """(latency model or None, the budget), every bad combination one clear error. `log`
    (default: the `cubesearch` logger) is told when this device is being profiled."""
    if log is None:
        from cubesearch.logging import get_logger

        log = get_logger(__name__).info
    lat = load_latency(settings, model, report, space, log=log) if needs_latency(settings) else None
    base_flops = cost.flops({})
    budget = resolve_budget(settings.budget, settings.objectives, base_flops=base_flops,
                            base_latency_us=lat.predict_us({}) if lat else None)
    if budget.objective == "latency":
        assert lat is not None
        fastest = lat.fastest_plan(space, searchable)
        best = lat.predict_us(fastest)
        if best > budget.value:
            raise CubesearchError(
                f"budget {settings.budget} ({budget.value / 1e3:.3f} ms) is below the fastest plan "
                f"in space {space.name!r}: {best / 1e3:.3f} ms on {lat.fingerprint.label()} (the "
                f"model is {lat.predict_us({}) / 1e3:.3f} ms; {len(fastest)} of {len(searchable)} "
                "sites are faster as blocks)")
    return lat, budget


def estimate_ms(ctx: Any, plan: Any) -> float:
    return ctx.latency.latency_ms(plan)


def measure_ms(ctx: Any, model: nn.Module) -> float:
    """The evaluated model's measured latency (ms): deploy form, the table's layout, threads,
    batch and dtype, the median of 5 runs after a warm-up."""
    from cubesearch.latency.measure import deploy_form, make_timer, prepare, runner, time_interleaved
    from cubesearch.latency.profile import torch_threads

    lat: LatencyModel = ctx.latency
    fp = lat.fingerprint
    here = current_fingerprint(fp)
    if here != fp:  # e.g. a Ray worker on another machine: its time would not compare
        diffs = "; ".join(fp.differences(here))
        raise CubesearchError(f"this trial runs on another device than the latency table's "
                              f"({diffs}): latency is measured where the table was profiled")
    device = torch.device("cuda" if fp.device == "cuda" else "cpu")
    size = ctx.settings.input_size
    with torch_threads(fp.threads or None):
        m, x = prepare(deploy_form(model.cpu()), torch.randn(fp.batch, *size), lat.layout, device,
                       getattr(torch, fp.dtype))
        us = time_interleaved({"m": runner(m, x)}, make_timer(device), repeats=5, warmup=1)["m"]
    return us / 1e3


def check_study_device(study: Any, ctx: Any) -> None:
    """Record the study's device; refuse to resume on another one unless `--reprofile`."""
    lat: LatencyModel | None = getattr(ctx, "latency", None)
    if lat is None:
        return
    mine = lat.fingerprint.to_dict()
    stored = study.user_attrs.get(STUDY_ATTR)
    if stored is None or getattr(ctx.settings, "reprofile", False):
        study.set_user_attr(STUDY_ATTR, mine)
        return
    if stored != mine:
        diffs = "; ".join(Fingerprint.from_dict(stored).differences(lat.fingerprint))
        raise CubesearchError(
            f"study {study.study_name!r} measured latency on another device ({diffs}); its "
            "trials' latencies would not compare: resume on that device, or add --reprofile to "
            "re-profile here")


def budget_line(ctx: Any) -> str:
    """`15.167 GFLOPs of 21.667`, or `25.000 ms of 31.2 ms on cpu (…)` under a latency budget."""
    budget = getattr(ctx, "budget", None)
    if budget is not None and budget.objective == "latency" and ctx.latency is not None:
        return (f"{budget.value / 1e3:.3f} ms of {ctx.latency.latency_ms({}):.3f} ms on "
                f"{ctx.latency.fingerprint.label()}")
    return f"{ctx.budget_flops / 1e9:.3f} GFLOPs of {ctx.base_flops / 1e9:.3f}"


def budget_label(ctx_or_result: Any) -> str:
    """The budget as a front table's title shows it: `15.167 GFLOPs` or `25.000 ms`."""
    ms = getattr(ctx_or_result, "budget_ms", None)
    if ms is not None:
        return f"{ms:.3f} ms"
    return f"{ctx_or_result.budget_gflops:.3f} GFLOPs"


def result_fields(ctx: Any) -> dict[str, Any]:
    """What a search result adds for latency: the budget in ms (a latency budget) and the
    device fingerprint its latencies were measured on."""
    budget, lat = getattr(ctx, "budget", None), getattr(ctx, "latency", None)
    return {"budget_ms": budget.value / 1e3 if budget is not None and budget.objective == "latency"
            else None, "device": lat.fingerprint.to_dict() if lat is not None else None}
