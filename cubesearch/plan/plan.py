"""`Plan`: which convs become Cube blocks, with which knobs, and where blocks are inserted.

A plan is plain, versioned JSON, enough with the model spec and the weights to rebuild a model:

    {"version": 1, "model": "smp:Unet:resnet34", "model_kwargs": {"num_classes": 1, "in_channels": 3},
     "input_size": [3, 512, 512],
     "sites": {"decoder.blocks.0.conv1.0": {"lattice_stride": 2, "groups": 4, ...}},
     "insertions": {"encoder.layer4": {...}}, "widths": {"decoder.blocks.1.conv1.0": 0.5}}

`sites` maps a conv's qualified module name to the `CubeConfig` of the block that replaces it;
`insertions` maps a module name to a block inserted after it as `x + block(x)`; `widths` maps a
conv's name to the kept fraction R (0 < R < 1) of its output channels, narrowed by channel
pruning (`cubesearch.plan.width`; written only when non-empty, so Cube-only plans are unchanged). A
conv is either a Cube site or narrowed, not both. Loading checks
the version and every knob; `Plan.check(report)` checks the site names against the model.
Presets (`make_plan`): `fullcube` (every eligible site), `decoder` (eligible sites outside the
encoder; the default), `encoder`, `none`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cubesearch.blocks import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import atomic_write, close_names
from cubesearch.plan.sites.records import Site, SiteReport

PLAN_VERSION = 1
PRESETS = ("fullcube", "decoder", "encoder", "none")
DEFAULT_PRESET = "decoder"


class Plan(BaseModel):
    """Site → `CubeConfig`, insertion points, the model spec and the reference input size."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    version: int = PLAN_VERSION
    model: str
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    input_size: tuple[int, int, int] = (3, 512, 512)
    sites: dict[str, CubeConfig] = Field(default_factory=dict)
    insertions: dict[str, CubeConfig] = Field(default_factory=dict)
    widths: dict[str, float] = Field(default_factory=dict)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise CubesearchError(f"invalid plan: {_one_line(exc)}") from None

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != PLAN_VERSION:
            raise ValueError(f"plan version {v} is not supported (this cubesearch reads version "
                             f"{PLAN_VERSION})")
        return v

    @field_validator("input_size")
    @classmethod
    def _size(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(n < 1 for n in v):
            raise ValueError(f"input_size must be three positive numbers, got {list(v)}")
        return v

    @field_validator("sites", "insertions", mode="before")
    @classmethod
    def _configs(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for name, cfg in v.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"site names must be non-empty strings, got {name!r}")
            if isinstance(cfg, CubeConfig):
                out[name] = cfg
                continue
            try:
                out[name] = CubeConfig.from_dict(cfg)
            except ValueError as exc:
                raise ValueError(f"{name!r}: {exc}") from None
        return out

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: dict[str, float]) -> dict[str, float]:
        for name, ratio in v.items():
            if not name:
                raise ValueError("narrowed conv names must be non-empty strings")
            if not 0 < ratio < 1:
                raise ValueError(f"{name!r}: width {ratio} is not a kept fraction of the output "
                                 "channels (give 0 < R < 1)")
        return v

    @model_validator(mode="after")
    def _cube_or_narrowed(self) -> Plan:
        both = sorted(set(self.sites) & set(self.widths))
        if both:
            raise ValueError(f"{both[0]!r} is both a Cube site and narrowed (widths): a conv is "
                             "one or the other")
        return self

    # --- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model": self.model,
            "model_kwargs": dict(self.model_kwargs),
            "input_size": list(self.input_size),
            "sites": {n: c.to_dict() for n, c in self.sites.items()},
            "insertions": {n: c.to_dict() for n, c in self.insertions.items()},
            **({"widths": dict(self.widths)} if self.widths else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> Plan:
        if not isinstance(data, dict):
            raise CubesearchError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("version")
        if version is None:
            raise CubesearchError(f"{source}: missing 'version' (this cubesearch reads version "
                                  f"{PLAN_VERSION})")
        if version != PLAN_VERSION:
            raise CubesearchError(f"{source}: plan version {version!r} is not supported (this "
                                  f"cubesearch reads version {PLAN_VERSION})")
        try:
            return cls(**data)
        except CubesearchError as exc:
            raise CubesearchError(f"{source}: {str(exc).removeprefix('invalid plan: ')}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        file = Path(path)
        if file.is_dir():
            file = file / "plan.json"
        if not file.exists():
            raise CubesearchError(f"no such plan file: {file}")
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise CubesearchError(f"{file}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        return cls.from_dict(data, source=str(file))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as JSON, atomically (`helpers.atomic_write`)."""
        return atomic_write(path, self.to_json())

    # --- checks ------------------------------------------------------------------------------

    def check(self, report: SiteReport) -> Plan:
        """Every site must be an eligible conv of the traced model; every narrowed conv a conv
        the model's forward calls."""
        convs = set(report.names) | set(report.skipped)
        strays = [n for n in self.widths if n not in convs]
        if strays:
            name = strays[0]
            where = (" (the model's forward never calls it)" if name in report.uncalled
                     else close_names(name, sorted(convs)))
            raise CubesearchError(f"plan narrows {name!r}, which is not a conv of {report.model}"
                                  f"{where}")
        known = set(report.names)
        bad = [n for n in self.sites if n not in known]
        if bad:
            name = bad[0]
            why = report.skipped.get(name)
            if why is not None:
                detail = f"{name!r} is a conv the block cannot replace: {why}"
            elif name in report.uncalled:
                detail = f"{name!r} is a conv the model's forward never calls"
            else:
                detail = f"{name!r} is not a conv of {report.model}{close_names(name, sorted(known))}"
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise CubesearchError(f"plan names sites that do not exist: {detail}{more}")
        for name, cfg in self.sites.items():
            site = report.site(name)
            problem = router_problem(site.in_channels, site.out_channels, cfg)
            if problem:
                raise CubesearchError(f"site {name!r}: {problem}")
        return self


def router_problem(in_channels: int, out_channels: int, cfg: CubeConfig) -> str | None:
    """Why a block with `cfg` cannot map in → out channels, else None. Without a router
    (router='none') every unit's input must be a multiple of 4: C_in for the first unit, and
    C_out for units 2..depth."""
    if cfg.router != "none":
        return None
    if in_channels % 4:
        return f"router='none' needs C_in divisible by 4 (it has {in_channels})"
    if cfg.depth > 1 and out_channels % 4:
        return (f"router='none' with depth {cfg.depth} needs C_out divisible by 4 (it has "
                f"{out_channels})")
    return None


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        known = ", ".join(Plan.model_fields)
        return f"unknown key {where!r} (known: {known})"
    extra = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
    return f"{where}: {msg}{extra}" if where else f"{msg}{extra}"


# --- building plans ----------------------------------------------------------------------------


def select_sites(sites: Iterable[Site], preset: str = DEFAULT_PRESET, *,
                 include: Sequence[str] = (), exclude: Sequence[str] = (),
                 config: CubeConfig | None = None) -> list[Site]:
    """The sites a preset picks. `include` regexes (if any) pick sites by name instead of by
    role, overriding the encoder/decoder heuristic; `exclude` regexes then drop sites. A preset
    leaves out a site where a block with `config` (default: `CubeConfig()`) would cost more
    FLOPs than its conv (`costlier_than_conv`); sites named by `include` are taken as named."""
    cfg = config or CubeConfig()
    return [s for s in _named(sites, preset, include, exclude)
            if include or not costlier_than_conv(s, cfg)]


def _named(sites: Iterable[Site], preset: str, include: Sequence[str], exclude: Sequence[str]
           ) -> list[Site]:
    """The sites the preset's role (or the `include` regexes) names, less `exclude`."""
    if preset not in PRESETS:
        raise CubesearchError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    inc = [_regex(p, "--include") for p in include]
    exc = [_regex(p, "--exclude") for p in exclude]
    chosen = []
    for s in sites:
        if inc:
            take = any(r.search(s.name) for r in inc)
        else:
            take = (preset == "fullcube" or (preset == "decoder" and s.role == "decoder")
                    or (preset == "encoder" and s.role == "encoder"))
        if take and not any(r.search(s.name) for r in exc):
            chosen.append(s)
    return chosen


def costlier_than_conv(site: Site, config: CubeConfig | None = None) -> str | None:
    """Why a block with `config` does not pay at `site` (it costs more FLOPs than the conv,
    e.g. a prediction conv with few output channels), else None."""
    ratio = site.block_ratio(config)
    return f"a block costs {ratio:.2f}× the conv's FLOPs" if ratio > 1 else None


def _regex(pattern: str, option: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise CubesearchError(f"{option} {pattern!r} is not a valid regular expression: {exc}"
                              ) from None


def parse_insertion(text: str) -> str:
    """`after:MODULE` (or just `MODULE`) → the module name."""
    name = text.strip()
    if name.startswith("after:"):
        name = name[len("after:"):]
    elif ":" in name:
        raise CubesearchError(f"insertion point {text!r}: expected after:MODULE_NAME")
    if not name:
        raise CubesearchError(f"insertion point {text!r}: missing module name")
    return name


def make_plan(report: SiteReport, model: str, *, preset: str = DEFAULT_PRESET,
              config: CubeConfig | None = None, include: Sequence[str] = (),
              exclude: Sequence[str] = (), insertions: Sequence[str] = (),
              model_kwargs: dict[str, Any] | None = None) -> tuple[Plan, list[str]]:
    """A plan from a preset over a `SiteReport`. Returns (plan, notes): sites the config cannot
    apply to (router='none' needs C_in % 4 == 0, and C_out % 4 == 0 when depth > 1) and, for a
    preset, sites where the block would cost more FLOPs than the conv are left out and named in
    the notes."""
    cfg = config or CubeConfig()
    notes: list[str] = []
    chosen = {}
    if not include:
        notes += [f"{s.name}: kept, {costlier_than_conv(s, cfg)}"
                  for s in _named(report.sites, preset, include, exclude) if costlier_than_conv(s, cfg)]
    for s in select_sites(report.sites, preset, include=include, exclude=exclude, config=cfg):
        problem = router_problem(s.in_channels, s.out_channels, cfg)
        if problem:
            notes.append(f"{s.name}: kept, {problem}")
            continue
        chosen[s.name] = cfg
    inserts = {parse_insertion(t): cfg for t in insertions}
    plan = Plan(model=model, model_kwargs=dict(model_kwargs or {}),
                input_size=tuple(report.input_size), sites=chosen, insertions=inserts)
    return plan, notes
