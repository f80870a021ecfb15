"""`profile_latency`: measure a model's latency table on this device (what `cubesearch profile`
runs), in the table's backend (`latency.backends`: PyTorch eager or ONNX Runtime).

For the unconverted model (deploy form; in eager the faster of contiguous and channels_last,
which then is the layout every op of this model is measured in), and for every searchable site:
its conv at each call's shape and every block configuration the space allows there, folded. Ops already
in the table (same device fingerprint) are not measured again; a shape shared by several sites
is measured once. Each shape's conv and its blocks are timed round-robin, side by side.
Optionally (`calibrate=K`) K random plans are converted and timed as whole models, next to the
unconverted model, and a `Correction` is fitted to them.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cubesearch.blocks import CubeBlock, CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.cost.latency.backends import (
    DEFAULT_BACKEND,
    check_backend,
    check_target,
    layouts,
    make_runner,
)
from cubesearch.cost.latency.fingerprint import device_fingerprint, resolve_device, resolve_dtype
from cubesearch.cost.latency.measure import deploy_form, make_timer, time_interleaved
from cubesearch.cost.latency.model import LatencyModel, SiteShape, fit_correction
from cubesearch.cost.latency.table import LatencyTable, block_key, conv_key, model_key
from cubesearch.models.load import load_model
from cubesearch.plan.conversion import convert
from cubesearch.plan.plan import Plan
from cubesearch.plan.sites import Site, SiteReport, find_sites, parse_input_size
from cubesearch.plan.space import SearchSpace

Progress = Callable[[int, str], None]  # (ops just measured, description)
CHUNK = 16  # blocks timed round-robin with their conv at a time


@dataclass
class ProfileStats:
    key: str
    layout: str
    base_us: float
    sites: int
    configs: int  # distinct block configs over the searchable sites
    ops_needed: int
    ops_measured: int
    ops_reused: int
    calibration_plans: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def site_configs(space: SearchSpace, sites: Sequence[Site]) -> dict[str, list[CubeConfig]]:
    """Every block config the space allows at each searchable site."""
    if space.mode == "per_site":
        return {s.name: space.site_combos(s) for s in sites}
    shared = space.shared_combos(sites)
    return {s.name: shared for s in sites}


def _conv(shape: SiteShape) -> nn.Module:
    groups = shape.groups
    return nn.Conv2d(shape.in_channels, shape.out_channels, 3, stride=shape.stride, padding=1,
                     groups=groups, bias=shape.bias)


def _block(shape: SiteShape, cfg: CubeConfig) -> nn.Module:
    return CubeBlock(shape.in_channels, shape.out_channels, cfg, stride=shape.stride).eval().fold()


def measure_plans(model: nn.Module, plans: Sequence[dict[str, CubeConfig]], *, layout: str,
                  device: torch.device, dtype: torch.dtype, batch: int,
                  input_size: Sequence[int], repeats: int, warmup: int,
                  progress: Progress | None = None, seed: int = 0, threads: int | None = None,
                  backend: str = DEFAULT_BACKEND) -> list[tuple[float, float]]:
    """Whole-model µs of each plan in deploy form in `backend`, each timed round-robin next to
    the unconverted model: [(plan µs, unconverted µs measured alongside)], with `threads`
    intra-op threads."""
    with torch_threads(threads):
        return _measure_plans(model, plans, layout=layout, device=device, dtype=dtype,
                              batch=batch, input_size=input_size, repeats=repeats, warmup=warmup,
                              progress=progress, seed=seed, backend=backend,
                              threads=torch.get_num_threads())


def _measure_plans(model: nn.Module, plans: Sequence[dict[str, CubeConfig]], *, layout: str,
                   device: torch.device, dtype: torch.dtype, batch: int,
                   input_size: Sequence[int], repeats: int, warmup: int,
                   progress: Progress | None, seed: int, backend: str, threads: int,
                   group: int = 4) -> list[tuple[float, float]]:
    timer = make_timer(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_size, generator=gen)
    how = {"layout": layout, "device": device, "dtype": dtype, "threads": threads}
    base = make_runner(backend, deploy_form(model), x, **how)
    out = []
    # `group` plans at a time, round-robin with the unconverted model
    for start in range(0, len(plans), group):
        fns = {"base": base}
        for i, sites in enumerate(plans[start:start + group]):
            plan = Plan(model="model", input_size=tuple(input_size), sites=dict(sites))
            fns[f"plan{i}"] = make_runner(backend, deploy_form(convert(model, plan)), x, **how)
        t = time_interleaved(fns, timer, repeats=repeats, warmup=warmup)
        out += [(t[f"plan{i}"], t["base"]) for i in range(len(fns) - 1)]
        del fns
        if progress:
            progress(len(t) - 1, "whole models")
    return out


def profile_latency(model: nn.Module, report: SiteReport, space: SearchSpace, *, spec: str,
                    table: LatencyTable, device: torch.device, dtype: torch.dtype,
                    num_classes: int = 1, repeats: int = 5, warmup: int = 1,
                    calibrate: int = 0, seed: int = 0, progress: Progress | None = None,
                    total: Callable[[int], None] | None = None,
                    model_kwargs: Mapping[str, Any] | None = None) -> ProfileStats:
    """Fill `table` with what `model`'s plans in `space` need (see the module docstring), with
    the fingerprint's thread count. `model_kwargs`: the factory's other arguments (`width=32`),
    part of the model's key."""
    with torch_threads(table.fingerprint.threads or None):
        return _profile(model, report, space, spec=spec, table=table, device=device, dtype=dtype,
                        num_classes=num_classes, repeats=repeats, warmup=warmup,
                        calibrate=calibrate, seed=seed, progress=progress, total=total,
                        model_kwargs=model_kwargs)


def _profile(model: nn.Module, report: Any, space: Any, *, spec: str, table: LatencyTable,
             device: torch.device, dtype: torch.dtype, num_classes: int, repeats: int,
             warmup: int, calibrate: int, seed: int, progress: Progress | None,
             total: Callable[[int], None] | None,
             model_kwargs: Mapping[str, Any] | None = None) -> ProfileStats:
    t0 = time.perf_counter()
    size = tuple(report.input_size)
    key = model_key(spec, size, num_classes, model_kwargs)
    timer = make_timer(device)
    table.timer, table.repeats, table.warmup = timer.kind, repeats, warmup
    searchable = space.searchable(report.sites)
    shapes = {s.name: SiteShape.of(s) for s in searchable}
    configs = site_configs(space, searchable)
    gen = torch.Generator().manual_seed(seed)
    model = model.eval()
    timing = {"device": device, "dtype": dtype, "repeats": repeats, "warmup": warmup}

    backend = table.fingerprint.backend
    timing["threads"] = torch.get_num_threads()
    entry = table.models.get(key)
    if entry is None:
        entry = _base_entry(model, spec, size, num_classes, table.fingerprint.batch, timer, gen,
                            progress, backend=backend, **timing)
        table.models[key] = entry
    layout = entry["layout"]
    entry["sites"] = {**entry.get("sites", {}), **{n: s.to_dict() for n, s in shapes.items()}}

    groups, needed = _op_groups(shapes, configs, layout)
    missing = {k for k in needed if k not in table.ops}
    if total:
        total(len(missing) + calibrate)
    _measure_ops(groups, missing, table, layout, table.fingerprint.batch, timer, gen, progress,
                 backend=backend, **timing)
    if calibrate:
        _calibrate(model, space, searchable, table, key, entry, calibrate, seed, progress, **timing)
    return ProfileStats(key=key, layout=layout, base_us=entry["base_us"], sites=len(shapes),
                        configs=len({c for cs in configs.values() for c in cs}),
                        ops_needed=len(needed), ops_measured=len(missing),
                        ops_reused=len(needed) - len(missing),
                        calibration_plans=calibrate, seconds=time.perf_counter() - t0,
                        notes=[])


def _base_entry(model: nn.Module, spec: str, size: tuple, num_classes: int, batch: int, timer: Any,
                gen: torch.Generator, progress: Progress | None, *, backend: str,
                device: torch.device, dtype: torch.dtype, repeats: int, warmup: int, threads: int
                ) -> dict[str, Any]:
    """Time the unconverted model in deploy form in each layout the backend takes; the fastest
    is the model's."""
    x = torch.randn(batch, *size, generator=gen)
    deployed = deploy_form(model)
    fns = {layout: make_runner(backend, copy.deepcopy(deployed), x, layout=layout, device=device,
                               dtype=dtype, threads=threads)
           for layout in layouts(backend)}
    if progress:
        progress(0, "unconverted model")
    times = time_interleaved(fns, timer, repeats=repeats, warmup=warmup)
    layout = min(times, key=times.get)
    return {"model": spec, "input_size": list(size), "num_classes": num_classes,
            "layout": layout, "base_us": times[layout], "base_us_by_layout": times,
            "sites": {}, "correction": None}


def _op_groups(shapes: dict[str, SiteShape], configs: dict[str, Any], layout: str
               ) -> tuple[dict[tuple, dict[str, Any]], set[str]]:
    """What to measure, grouped by a call's shape: its conv and every block config there."""
    groups: dict[tuple, dict[str, Any]] = {}
    needed: set[str] = set()
    for name, shape in shapes.items():
        for hw in shape.calls:
            sig = (shape.in_channels, shape.out_channels, shape.stride, shape.groups, shape.bias, hw)
            g = groups.setdefault(sig, {"shape": shape, "hw": hw, "blocks": {}})
            g["conv"] = conv_key(layout, shape.in_channels, shape.out_channels, shape.stride,
                                 shape.groups, shape.bias, hw)
            needed.add(g["conv"])
            for cfg in configs[name]:
                k = block_key(layout, shape.in_channels, shape.out_channels, shape.stride, hw, cfg)
                g["blocks"][k] = cfg
                needed.add(k)
    return groups, needed


def _measure_ops(groups: dict[tuple, dict[str, Any]], missing: set[str], table: LatencyTable,
                 layout: str, batch: int, timer: Any, gen: torch.Generator,
                 progress: Progress | None, *, backend: str, device: torch.device,
                 dtype: torch.dtype, repeats: int, warmup: int, threads: int) -> None:
    """Time the missing blocks of each shape in chunks, each chunk side by side with its conv."""
    how = {"layout": layout, "device": device, "dtype": dtype, "threads": threads}
    for g in groups.values():
        shape, hw = g["shape"], g["hw"]
        todo = [(k, c) for k, c in g["blocks"].items() if k in missing]
        if not todo and g["conv"] not in missing:
            continue
        x = torch.randn(batch, shape.in_channels, *hw, generator=gen)
        conv = make_runner(backend, _conv(shape), x, **how)
        conv_times = []
        label = f"{shape.in_channels}→{shape.out_channels} at {hw[0]}×{hw[1]}"
        for chunk in [todo[i:i + CHUNK] for i in range(0, len(todo), CHUNK)] or [[]]:
            fns = {"conv": conv}
            for k, cfg in chunk:
                fns[k] = make_runner(backend, _block(shape, cfg), x, **how)
            times = time_interleaved(fns, timer, repeats=repeats, warmup=warmup)
            conv_times.append(times.pop("conv"))
            table.ops.update(times)
            if progress:
                progress(len(chunk), label)
        if g["conv"] in missing:
            table.ops[g["conv"]] = sorted(conv_times)[len(conv_times) // 2]
            if progress:
                progress(1, label)


def _calibrate(model: nn.Module, space: Any, searchable: list, table: LatencyTable, key: str,
               entry: dict[str, Any], calibrate: int, seed: int, progress: Progress | None, *,
               device: torch.device, dtype: torch.dtype, repeats: int, warmup: int, threads: int
               ) -> None:
    """Fit the per-device correction on a few random plans measured as whole models."""
    lat = LatencyModel(table, key)
    lat.correction = None
    rng = random.Random(seed)
    plans = [space.random_plan(searchable, rng, share=(i + 0.5) / calibrate) for i in range(calibrate)]
    plans = [p for p in plans if p] or plans
    measured = measure_plans(model, plans, layout=entry["layout"], device=device, dtype=dtype,
                             batch=table.fingerprint.batch, input_size=tuple(entry["input_size"]),
                             repeats=repeats, warmup=warmup, progress=progress, seed=seed,
                             threads=threads, backend=table.fingerprint.backend)
    samples = []
    for plan, (plan_us, base_us) in zip(plans, measured, strict=True):
        removed, added, n = lat.terms(plan)
        # the base drifts with the machine's load: scale each plan to the table's base
        samples.append((removed, added, n, plan_us * entry["base_us"] / base_us))
    entry["correction"] = fit_correction(samples, entry["base_us"]).to_dict()
    entry["calibration"] = [
        {"plan": {n: c.to_dict() for n, c in p.items()}, "measured_us": m, "base_us_alongside": b}
        for p, (m, b) in zip(plans, measured, strict=True)]


def profile_model(spec: str, *, device: str = "cpu", batch: int = 1, threads: int | None = None,
                  dtype: str = "float32", input_size: Any = (3, 512, 512), space: Any = "default",
                  out: str | Any = "runs/search/latency.json", num_classes: int = 1,
                  pretrained: bool = False, reprofile: bool = False, calibrate: int = 4,
                  repeats: int = 5, warmup: int = 1, seed: int = 0, backend: str = DEFAULT_BACKEND,
                  progress: Progress | None = None, total: Callable[[int], None] | None = None,
                  log: Callable[[str], None] | None = None
                  ) -> tuple[LatencyTable, ProfileStats, str]:
    """Load `spec`, find its sites and profile them into the table at `out` (reused when it was
    measured on this device in `backend`; re-measured when not, or with `reprofile`). Returns
    (table, stats, status)."""
    backend = check_backend(backend)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    check_target(backend, dev, dt)
    if batch < 1:
        raise CubesearchError(f"--batch {batch}: must be at least 1")
    if repeats < 1 or warmup < 0 or calibrate < 0:
        raise CubesearchError("--repeats must be ≥ 1, --warmup and --calibrate ≥ 0")
    fp = device_fingerprint(dev, threads=threads, batch=batch, dtype=dt, backend=backend)
    size = parse_input_size(input_size)
    sp = space if isinstance(space, SearchSpace) else SearchSpace.load(space)
    table, status = LatencyTable.open(out, fp, reprofile=reprofile)
    if log:
        log(f"latency table {out}: {status}; device {fp.label()}")
    model = load_model(spec, num_classes=num_classes, in_channels=size[0], pretrained=pretrained)
    report = find_sites(model, size, flops=False)
    if not sp.searchable(report.sites):
        raise CubesearchError(f"{spec}: no eligible 3×3 conv matches the space's sites "
                              f"({sp.sites!r}); nothing to profile")
    key = model_key(spec, size, num_classes)
    if reprofile or (key in table.models and table.models[key].get("layout") is None):
        table.models.pop(key, None)
    stats = profile_latency(model.to(dev), report, sp, spec=spec, table=table, device=dev,
                            dtype=dt, num_classes=num_classes, repeats=repeats, warmup=warmup,
                            calibrate=calibrate if (stats_need_calibration(table, key)
                                                    or reprofile) else 0,
                            seed=seed, progress=progress, total=total)
    if out is not None:
        table.save(Path(out))
    return table, stats, status


def stats_need_calibration(table: LatencyTable, key: str) -> bool:
    entry = table.models.get(key)
    return entry is None or entry.get("correction") is None
