"""`convert_spec`: the `cubesearch convert` command as a Python API, returning a `ConvertReport`.

From a model spec (or a plan file and the model it names) to a converted model and its
figures: build the model, trace its sites, make the plan (a preset, regexes, insertions, or a
plan file merged with the options), convert, check the output shape, count the converted
model's FLOPs with fvcore and compare the cost model's prediction with it, and optionally save
the checkpoint. `cubesearch.plan.conversion.convert` stays the rewrite itself (model + plan → model);
this module sits above the checkpoint, the cost model and the sites, which all import it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from cubesearch.blocks import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.cost.pricing import CostModel, count_params, reference_flops, reference_flops_by_module
from cubesearch.models.load import load_model
from cubesearch.models.trust import checked_spec, file_kwargs
from cubesearch.plan.checkpoint import _replaceable, check_destination
from cubesearch.plan.checkpoint import save as save_checkpoint
from cubesearch.plan.conversion import BLOCK_KEY, convert
from cubesearch.plan.plan import PRESETS, Plan, costlier_than_conv, make_plan, parse_insertion
from cubesearch.plan.sites import Site, SiteReport, find_sites, module_output_shapes, parse_input_size
from cubesearch.plan.space import MIN_LATTICE_Q

__all__ = ["ConvertReport", "convert_spec", "pay_notes", "skipped_summary"]

DEFAULT_INPUT_SIZE = (3, 512, 512)


@dataclass
class ConvertReport:
    """A conversion and its figures. FLOPs are fvcore's (eval mode, batch 1) at `input_size`;
    `cost_model_error` is (cost model − fvcore) / fvcore for the converted model."""

    model: str
    input_size: tuple[int, int, int]
    plan: Plan
    converted: nn.Module
    sites_report: SiteReport
    before_flops: int | None
    before_params: int
    after_flops: int
    after_params: int
    estimate_flops: int | None  # None for a plan with widths: the cost model prices Cube-only plans
    cost_model_microseconds: float | None
    output_shape: tuple[int, ...] | None
    sites: list[dict[str, Any]] = field(default_factory=list)  # one row per replaced / inserted block
    notes: list[str] = field(default_factory=list)
    out: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def cost_model_error(self) -> float | None:
        if self.estimate_flops is None:
            return None
        return (self.estimate_flops - self.after_flops) / self.after_flops if self.after_flops else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON `cubesearch convert --json` prints."""
        before = self.before_flops
        return {
            "model": self.model, "input_size": list(self.input_size),
            "trace_path": self.sites_report.trace_path,
            "before": {"gflops": before / 1e9 if before is not None else None,
                       "params": self.before_params},
            "after": {"gflops": self.after_flops / 1e9, "params": self.after_params,
                      "gflops_cost_model": (None if self.estimate_flops is None
                                            else self.estimate_flops / 1e9)},
            "cost_model_error": self.cost_model_error,
            "cost_model_microseconds": (None if self.cost_model_microseconds is None
                                        else round(self.cost_model_microseconds, 1)),
            "widths": dict(self.plan.widths),
            "sites_eligible": len(self.sites_report.sites), "sites_replaced": len(self.plan.sites),
            "insertions": len(self.plan.insertions), "sites": self.sites, "plan": self.plan.to_dict(),
            "output_shape": list(self.output_shape) if self.output_shape else None,
            "out": str(self.out) if self.out else None, "notes": self.notes, "seconds": self.seconds,
        }


def pay_notes(sites: Sequence[Site]) -> list[str]:
    """Where a block does not pay by default, one line per reason: sites whose lattice q is
    below the spaces' default `min_lattice_q` (not searched), and sites where the default block
    costs more FLOPs than the conv (presets keep the conv)."""
    lines = []
    low = [s for s in sites if s.lattice_q < MIN_LATTICE_Q]
    if low:
        named = ", ".join(f"{s.name} (q={s.lattice_q})" for s in low[:4])
        more = f" and {len(low) - 4} more" if len(low) > 4 else ""
        lines.append(f"{len(low)} site(s) with fewer than {MIN_LATTICE_Q} channels per lattice "
                     f"position (q = C_in/4, rounded up): {named}{more}; search spaces do not "
                     "search them unless they set `min_lattice_q: 1`.")
    for s in sites:
        why = costlier_than_conv(s)
        if why:
            lines.append(f"{s.name}: {why}; presets keep the conv.")
    return lines


def skipped_summary(skipped: dict[str, str]) -> str:
    """'3 stride 2, 1 1×1 kernel': why convs are not eligible, most common first."""
    counts = Counter(skipped.values())
    return ", ".join(f"{n} {reason}" for reason, n in counts.most_common())


@dataclass
class _Request:
    """The model, its factory arguments, the input size and the insertion points, after
    merging a plan file (if any) with the options."""

    model: str
    kwargs: dict[str, Any]
    size: tuple[int, int, int]
    insertions: list[str]
    file_plan: Plan | None


def _request(model: str | None, plan_file: str | Path | None, input_size: Any,
             num_classes: int | None, model_kwargs: dict[str, Any] | None, insert: Sequence[str],
             trust_model_code: bool) -> _Request:
    file_plan = Plan.load(plan_file) if plan_file is not None else None
    if model is None:
        if file_plan is None:
            raise CubesearchError("missing MODEL (a model spec, or --plan plan.json)")
        model = checked_spec(file_plan.model, source=plan_file, folder=Path(plan_file).parent,
                             trust_code=trust_model_code)  # code a file names runs only if trusted
    extra = file_kwargs(file_plan.model_kwargs, plan_file) if file_plan is not None else {}
    plan_classes = extra.pop("num_classes", None)
    extra.pop("in_channels", None)
    extra.update(model_kwargs or {})
    if input_size is not None:
        size = parse_input_size(input_size)
    else:
        size = tuple(file_plan.input_size) if file_plan is not None else DEFAULT_INPUT_SIZE
    classes = int(num_classes if num_classes is not None else plan_classes or 1)
    names = [parse_insertion(t) for t in insert]
    if file_plan is not None:
        names += [n for n in file_plan.insertions if n not in names]
    return _Request(model, {"num_classes": classes, "in_channels": size[0], **extra}, size, names,
                    file_plan)


def _plan(req: _Request, report: SiteReport, preset: str, config: CubeConfig,
          include: Sequence[str], exclude: Sequence[str]) -> tuple[Plan, list[str]]:
    fp = req.file_plan
    if fp is None:
        return make_plan(report, req.model, preset=preset, config=config, include=include,
                         exclude=exclude, insertions=req.insertions, model_kwargs=req.kwargs)
    inserts = {**fp.insertions, **{n: config for n in req.insertions if n not in fp.insertions}}
    plan = Plan(model=req.model, model_kwargs=req.kwargs, input_size=req.size,
                sites=dict(fp.sites), insertions=inserts, widths=dict(fp.widths))
    return plan.check(report), []


def _notes(report: SiteReport, plan: Plan, preset: str, from_file: bool,
           rows: list[dict[str, Any]]) -> list[str]:
    notes = []
    if not report.sites:
        notes.append(f"no eligible 3×3 conv in {report.model}"
                     + (f" ({skipped_summary(report.skipped)})" if report.skipped else "")
                     + "; the plan is empty")
    elif not plan.sites and not from_file and preset != "none":
        roles = Counter(s.role for s in report.sites)
        notes.append(f"the {preset!r} preset picks no site ({dict(roles)} eligible); try "
                     "--preset fullcube or --include REGEX")
    fallback = [r for r in rows if r["groups_used"] != r["config"]["groups"]]
    if fallback:
        notes.append(f"groups {fallback[0]['config']['groups']} does not divide the fusion conv's "
                     f"channels at {len(fallback)} site(s); their blocks use the gcd "
                     f"(groups_used, e.g. g{fallback[0]['groups_used']} at {fallback[0]['site']})")
    return notes


def _short(cfg: CubeConfig, used: int) -> str:
    """The block's short name; with the groups it really uses when the user asked for groups
    that do not divide (`g1 (of 3)`), the plain name for the default groups."""
    return cfg.short(used) if "groups" in cfg.model_fields_set else cfg.short()


def site_rows(report: SiteReport, plan: Plan, cost: CostModel) -> list[dict[str, Any]]:
    """Per replaced site and per insertion: shapes, the conv's and the block's FLOPs and params."""
    rows = []
    for name, cfg in plan.sites.items():
        s = report.site(name)
        dflops, dparams = cost.site_delta(name, cfg)
        conv = s.macs if s.flops is None else s.flops  # fvcore's count of the conv module
        used = cfg.groups_used(s.in_channels, s.out_channels)  # the gcd where groups do not divide
        rows.append({"site": name, "role": s.role, "in": s.in_channels, "out": s.out_channels,
                     "stride": s.stride, "input_hw": list(s.input_hw), "calls": s.calls,
                     "conv_gmacs": conv / 1e9, "block_gflops": (conv + dflops) / 1e9,
                     "conv_params": s.params, "block_params": s.params + dparams,
                     "config": cfg.to_dict(), "groups_used": used, "config_short": _short(cfg, used)})
    for name, cfg in plan.insertions.items():
        dflops, dparams = cost.insertion_delta(name, cfg)
        shape = report.output_shapes[name][0]
        used = cfg.groups_used(shape[1], shape[1])
        rows.append({"site": f"after:{name}", "role": "insertion", "in": shape[1], "out": shape[1],
                     "stride": 1, "input_hw": list(shape[2:]), "calls": len(report.output_shapes[name]),
                     "conv_gmacs": 0.0, "block_gflops": dflops / 1e9, "conv_params": 0,
                     "block_params": dparams, "config": cfg.to_dict(), "groups_used": used,
                     "config_short": _short(cfg, used)})
    return rows


def built_rows(report: SiteReport, plan: Plan, converted: nn.Module, by_module: dict[str, int]
               ) -> list[dict[str, Any]]:
    """`site_rows` for a plan with widths, read off the built model: a block downstream of a
    narrowed conv has the narrowed shape, so its FLOPs are fvcore's count of the block."""
    rows = []
    for name, cfg in plan.sites.items():
        s, block = report.site(name), converted.get_submodule(name)
        used = cfg.groups_used(block.in_channels, block.out_channels)
        rows.append({"site": name, "role": s.role, "in": block.in_channels, "out": block.out_channels,
                     "stride": s.stride, "input_hw": list(s.input_hw), "calls": s.calls,
                     "conv_gmacs": s.conv_flops / 1e9, "block_gflops": by_module[name] / 1e9,
                     "conv_params": s.params, "block_params": count_params(block),
                     "config": cfg.to_dict(), "groups_used": used, "config_short": _short(cfg, used)})
    for name, cfg in plan.insertions.items():
        key = f"{name}.{BLOCK_KEY}"
        block = converted.get_submodule(key)
        used = cfg.groups_used(block.in_channels, block.out_channels)
        shape = report.output_shapes[name][0]
        rows.append({"site": f"after:{name}", "role": "insertion", "in": block.in_channels,
                     "out": block.out_channels, "stride": 1, "input_hw": list(shape[2:]),
                     "calls": len(report.output_shapes[name]), "conv_gmacs": 0.0,
                     "block_gflops": by_module[key] / 1e9, "conv_params": 0,
                     "block_params": count_params(block), "config": cfg.to_dict(),
                     "groups_used": used, "config_short": _short(cfg, used)})
    return rows


def narrowed_notes(model: nn.Module, converted: nn.Module, plan: Plan) -> list[str]:
    """One note per narrowed conv: its output channels before → after, and the width."""
    return [f"{name}: narrowed {model.get_submodule(name).out_channels}→"
            f"{converted.get_submodule(name).out_channels} output channels (width {r}); the "
            "cost model prices Cube-only plans, so FLOPs are fvcore's on the built model"
            for name, r in plan.widths.items()]


def _output_shape(converted: nn.Module, report: SiteReport, size: tuple[int, int, int]
                  ) -> tuple[int, ...] | None:
    got = module_output_shapes(converted, [""], size)[""]
    expected = report.output_shape
    if expected is not None and got and tuple(got[0]) != tuple(expected):
        raise CubesearchError(f"the converted model's output shape {tuple(got[0])} differs from "
                              f"the original's {tuple(expected)}")
    return tuple(got[0]) if got else None


def convert_spec(model: str | None = None, *, plan: str | Path | None = None,
                 preset: str = "decoder", config: CubeConfig | None = None,
                 include: Sequence[str] = (), exclude: Sequence[str] = (),
                 insert: Sequence[str] = (), depthwise: bool = False, strided: bool = False,
                 input_size: Any = None, num_classes: int | None = None, pretrained: bool = False,
                 model_kwargs: dict[str, Any] | None = None, trace: str = "auto",
                 out: str | Path | None = None, trust_model_code: bool = False) -> ConvertReport:
    """Convert `model` (a spec; optional with `plan`, a plan.json whose sites and insertions are
    used instead of `preset`) and report before/after. `insert`: `after:MODULE` points;
    `config`: the new blocks' knobs; `out`: write a checkpoint there (a new or empty folder, or
    a cubesearch checkpoint). Raises `CubesearchError` on bad input, before writing anything."""
    t0 = time.perf_counter()
    if preset not in PRESETS:
        raise CubesearchError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    if out is not None:
        if Path(out).is_dir() and not _replaceable(Path(out)):  # the line `convert` always gave
            raise CubesearchError(f"{out} exists and is not a cubesearch checkpoint; "
                                  "choose a new or empty folder")
        check_destination(out, option="--out")  # a file, an unwritable parent
    req = _request(model, plan, input_size, num_classes, model_kwargs, insert, trust_model_code)
    extra = {k: v for k, v in req.kwargs.items() if k not in ("num_classes", "in_channels")}
    net = load_model(req.model, num_classes=req.kwargs["num_classes"], in_channels=req.size[0],
                     pretrained=pretrained, **extra)
    t_load = time.perf_counter() - t0
    from_file = req.file_plan is not None
    report = find_sites(net, req.size, depthwise=depthwise or from_file, strided=strided or from_file,
                        trace=trace, insertions=req.insertions, name=req.model)
    the_plan, notes = _plan(req, report, preset, config or CubeConfig(), include, exclude)
    cost = CostModel.from_report(report)
    converted = convert(net, the_plan)
    estimate = cost_us = None
    if the_plan.widths:  # priced on the built model (the cost model prices Cube-only plans)
        after_flops, by_module = reference_flops_by_module(converted, req.size)
        rows = built_rows(report, the_plan, converted, by_module)
        notes = notes + narrowed_notes(net, converted, the_plan)
    else:
        t1 = time.perf_counter()
        estimate = cost.flops(the_plan)
        cost_us = (time.perf_counter() - t1) * 1e6
        after_flops = reference_flops(converted, req.size)
        rows = site_rows(report, the_plan, cost)
    shape = _output_shape(converted, report, req.size)
    saved = save_checkpoint(out, converted, the_plan) if out is not None else None
    return ConvertReport(
        model=req.model, input_size=req.size, plan=the_plan, converted=converted, sites_report=report,
        before_flops=report.base_flops, before_params=report.base_params, after_flops=after_flops,
        after_params=count_params(converted), estimate_flops=estimate, cost_model_microseconds=cost_us,
        output_shape=shape, sites=rows, notes=notes + _notes(report, the_plan, preset, from_file, rows),
        out=saved, seconds={"load": round(t_load, 3), "trace": round(report.seconds, 3),
                            "total": round(time.perf_counter() - t0, 3)})
