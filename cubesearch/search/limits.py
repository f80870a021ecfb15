"""What bounds a search: `--budget` (FLOPs, a latency, or a share of the first cost objective
named) and, when latency is an objective or the budget, this device's latency model.

`setup` loads the latency table (`--latency-table`, default OUT/latency.json), profiles this
device into it when it lacks the model or the space's configs, refuses a table measured on
another device or timed in another backend than `--latency-backend` unless `--reprofile`,
resolves `--budget` and refuses a latency budget below the fastest plan. `build_context` calls
it once; the plan-by-plan hooks are `search.objectives`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from cubesearch.core.errors import CubesearchError
from cubesearch.core.logging import get_logger
from cubesearch.cost.budget import Budget, budget_objective, resolve_budget
from cubesearch.cost.latency.fingerprint import current_fingerprint
from cubesearch.cost.latency.model import LatencyModel
from cubesearch.cost.latency.profile import profile_latency, site_configs, stats_need_calibration
from cubesearch.cost.latency.table import LatencyTable, model_key
from cubesearch.cost.pricing import CostModel
from cubesearch.plan.sites import Site, SiteReport
from cubesearch.plan.space import SearchSpace
from cubesearch.search.settings import SearchSettings

__all__ = ["load_latency", "needs_latency", "setup", "table_path"]


def needs_latency(settings: SearchSettings) -> bool:
    return "latency" in settings.objectives or budget_objective(
        settings.budget, settings.objectives) == "latency"


def table_path(settings: SearchSettings) -> Path:
    return Path(settings.latency_table or Path(settings.out) / "latency.json")


def load_latency(settings: SearchSettings, model: nn.Module, report: SiteReport, space: SearchSpace,
                 *, log: Callable[[str], None] | None = None) -> LatencyModel:
    """The latency model of `settings.model` on this device (profiling what is missing)."""
    path = table_path(settings)
    backend = settings.latency_backend
    if path.exists():
        table = LatencyTable.load(path)
        if table.fingerprint.backend != backend and not settings.reprofile:
            raise CubesearchError(
                f"latency table {path} was timed in backend {table.fingerprint.backend!r}, not "
                f"--latency-backend {backend}: profile one (`cubesearch profile MODEL --backend "
                f"{backend} -o FILE`) and pass --latency-table FILE, or add --reprofile to "
                "re-measure this one")
        here = current_fingerprint(table.fingerprint, backend=backend)
        if table.fingerprint != here:
            if not settings.reprofile:
                diffs = "; ".join(table.fingerprint.differences(here))
                raise CubesearchError(
                    f"latency table {path} was measured on another device ({diffs}); add "
                    "--reprofile to measure this one (or --latency-table FILE)")
            table = LatencyTable(fingerprint=here)
    else:
        table = LatencyTable(fingerprint=current_fingerprint(backend=backend))
    key = model_key(settings.model, settings.input_size, settings.num_classes, settings.model_kwargs)
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
                        model_kwargs=settings.model_kwargs,
                        calibrate=4 if stats_need_calibration(table, key) else 0)
        table.save(path)
    return LatencyModel(table, key)


def setup(settings: SearchSettings, model: nn.Module, report: SiteReport, space: SearchSpace,
          searchable: Sequence[Site], cost: CostModel, *, log: Callable[[str], None] | None = None
          ) -> tuple[LatencyModel | None, Budget]:
    """(latency model or None, the budget), every bad combination one clear error. `log`
    (default: the `cubesearch` logger) is told when this device is being profiled."""
    log = log or get_logger(__name__).info
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
