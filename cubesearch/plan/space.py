"""Search spaces: YAML files a user can read, copy and edit.

The shipped spaces (`default`, `shared`, `fullcube`, `paper`) are package data in
`cubesearch/plan/spaces/*.yaml`, read with `importlib.resources` so they are there after a plain
`pip install` (a wheel, not only an editable checkout). To start a space of your own, copy one:
`python -c "from cubesearch.plan.space import shipped_space_text as t; print(t('default'))" > my.yaml`.

A space says which sites are searchable (`all`, `decoder`, `encoder`, or include/exclude
regexes; the conv computing the logits only with `prediction_conv: true`; sites whose block
would have fewer than `min_lattice_q` channels per lattice position, 4 by default, never), how sites are
decided (`per_site`: keep-or-replace and knobs per site; `shared`:
keep-or-replace per site, one config for all; `fullcube`: every searchable site replaced, one
config), and the values each `CubeConfig` knob may take. `sample_plan` turns an Optuna trial into
site → `CubeConfig` (define-by-run), the same function for every sampler and backend.

`widths` (the `joint` space; empty elsewhere) adds a second kind of option per site: the conv
narrowed by channel pruning to a kept fraction R of its output channels (`Plan.widths`,
`cubesearch.plan.width`). Only the site map (`search --strategy map`) searches them; `site_widths`
lists those that differ at a site.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cubesearch.blocks import CubeConfig, lattice_channels
from cubesearch.core.errors import CubesearchError, one_line
from cubesearch.plan.width import kept_channels

_SHIPPED = resources.files("cubesearch.plan") / "spaces"
# The shipped spaces' folder on disk (inside the installed package); read it through
# `shipped_spaces` / `shipped_space_text`, which also work when the package is not on a file system.
SPACES_DIR = Path(str(_SHIPPED))
KNOBS = tuple(CubeConfig.model_fields)
# Fewest channels per lattice position (q) a searched site's block may have: at q < 4 (an RGB stem,
# q = 1; C_in ≤ 12) each lattice cell sees too few channels (issue 29's evidence).
MIN_LATTICE_Q = 4


class SiteLike(Protocol):
    name: str
    in_channels: int
    out_channels: int
    role: str


class SiteFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include: list[str] = Field(default_factory=lambda: [".*"])
    exclude: list[str] = Field(default_factory=list)

    @field_validator("include", "exclude")
    @classmethod
    def _regexes_compile(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"bad regex {p!r}: {exc}") from None
        return patterns


class KnobChoices(BaseModel):
    """Allowed values per knob; each value must be one `CubeConfig` accepts."""

    model_config = ConfigDict(extra="forbid")
    lattice_stride: list[int] = [2]
    groups: list[int] = [4]
    router: list[str] = ["pre"]
    attention: list[bool] = [True]
    depth: list[int] = [1]
    fusion_kernel: list[int] = [3]
    act: list[str] = ["gelu"]

    @model_validator(mode="after")
    def _values_are_valid_knobs(self) -> KnobChoices:
        for knob in KNOBS:
            values = getattr(self, knob)
            if not values:
                raise ValueError(f"{knob}: needs at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"{knob}: repeated values {values}")
            for v in values:
                CubeConfig(**{knob: v})  # raises ValueError naming the knob and allowed values
        return self

    def combos(self, exclude_router_none: bool = False) -> list[CubeConfig]:
        """Every config in the product of the choices."""
        routers = [r for r in self.router if not (exclude_router_none and r == "none")]
        values = [routers if k == "router" else getattr(self, k) for k in KNOBS]
        return [CubeConfig(**dict(zip(KNOBS, combo, strict=True))) for combo in itertools.product(*values)]


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "custom"
    description: str = ""
    sites: Literal["all", "decoder", "encoder"] | SiteFilter = "decoder"
    # The conv that computes the logits (e.g. smp's `segmentation_head.0`) is searchable only
    # when true: a block there must reproduce the logits themselves, which local distillation
    # does poorly, and short trials then often end predicting one class everywhere.
    prediction_conv: bool = False
    # A block whose lattice has fewer channels per position than this (q = C_in padded to a
    # multiple of 4, over 4: an RGB stem has q = 1) is not searched: set 1 to search every site.
    min_lattice_q: int = Field(MIN_LATTICE_Q, ge=1)
    mode: Literal["per_site", "shared", "fullcube"] = "per_site"
    knobs: KnobChoices = Field(default_factory=KnobChoices)
    # Kept fractions of a site's output channels to try as options beside the Cube configs (the
    # conv narrowed by channel pruning); searched by the site map only (--strategy map).
    widths: list[float] = Field(default_factory=list)

    @field_validator("widths")
    @classmethod
    def _widths(cls, values: list[float]) -> list[float]:
        for r in values:
            if not 0 < r < 1:
                raise ValueError(f"{r} is not a kept fraction of the output channels (give "
                                 "0 < R < 1)")
        if len(set(values)) != len(values):
            raise ValueError(f"repeated values {values}")
        return sorted(values)

    @model_validator(mode="after")
    def _widths_per_site(self) -> SearchSpace:
        if self.widths and self.mode != "per_site":
            raise ValueError(f"widths: a site is narrowed or not on its own, so widths need "
                             f"mode per_site (this space is {self.mode})")
        return self

    # --- loading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, name_or_path: str | Path) -> SearchSpace:
        """A shipped space by name (`default`, `shared`, `fullcube`, `paper`) or a YAML path."""
        path = Path(name_or_path)
        if not path.suffix and not path.exists():
            return cls._parse(shipped_space_text(str(name_or_path)), source=f"{name_or_path} (shipped)")
        if not path.exists():
            raise CubesearchError(f"search space file not found: {path}")
        return cls._parse(path.read_text(), source=str(path))

    @classmethod
    def _parse(cls, text: str, source: str) -> SearchSpace:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CubesearchError(f"{source}: not valid YAML: {one_line(exc)}") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "search space") -> SearchSpace:
        if not isinstance(data, dict):
            raise CubesearchError(f"{source}: expected a mapping at the top level")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = max(exc.errors(), key=lambda e: len(e["loc"]))  # the most specific one
            where = ".".join(str(p) for p in err["loc"] if p != "SiteFilter")
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            raise CubesearchError(f"{source}: {where + ': ' if where else ''}{msg}") from None

    # --- sites -------------------------------------------------------------------------------

    def searchable(self, sites: Iterable[SiteLike]) -> list[SiteLike]:
        """The sites this space searches: by role or regex, less the prediction conv (unless
        `prediction_conv`) and sites whose lattice q is below `min_lattice_q`."""
        sites = [s for s in sites if (self.prediction_conv or not getattr(s, "prediction", False))
                 and lattice_channels(s.in_channels) // 4 >= self.min_lattice_q]
        if self.sites == "all":
            return sites
        if self.sites in ("decoder", "encoder"):
            return [s for s in sites if s.role == self.sites]
        flt = self.sites
        return [s for s in sites
                if any(re.search(p, s.name) for p in flt.include)
                and not any(re.search(p, s.name) for p in flt.exclude)]

    def site_widths(self, site: SiteLike) -> list[float]:
        """The space's widths that narrow `site` to different channel counts (R ascending; of
        several R that keep the same count, the first). None at the prediction conv (its output
        channels are the model's) or at a conv with ≤ 8 output channels (nothing to remove)."""
        if getattr(site, "prediction", False) or site.out_channels <= 8:
            return []
        seen: dict[int, float] = {}
        for r in self.widths:
            seen.setdefault(kept_channels(site.out_channels, r), r)
        return list(seen.values())

    def no_router_none(self, site: SiteLike) -> bool:
        """router='none' feeds the lattice straight from the input: it needs C_in % 4 == 0, and
        C_out % 4 == 0 when blocks are stacked (depth > 1). Sites that fail it never get 'none'."""
        return site.in_channels % 4 != 0 or (max(self.knobs.depth) > 1 and site.out_channels % 4 != 0)

    def site_combos(self, site: SiteLike) -> list[CubeConfig]:
        return self.knobs.combos(exclude_router_none=self.no_router_none(site))

    def shared_combos(self, sites: Sequence[SiteLike]) -> list[CubeConfig]:
        """Configs valid at every site (router=none dropped if any site cannot take it)."""
        return self.knobs.combos(exclude_router_none=any(self.no_router_none(s) for s in sites))

    # --- sampling ----------------------------------------------------------------------------

    def sample_plan(self, trial: Any, sites: Sequence[SiteLike]) -> dict[str, CubeConfig]:
        """Define-by-run: ask `trial` for this space's parameters, return site → config."""
        if self.mode == "per_site":
            chosen: dict[str, CubeConfig] = {}
            for site in sites:
                if trial.suggest_categorical(f"replace:{site.name}", [False, True]):
                    chosen[site.name] = self._suggest_config(trial, f"{site.name}.",
                                                             self.no_router_none(site))
            return chosen
        no_none = any(self.no_router_none(s) for s in sites)
        if self.mode == "shared":
            replaced = [s for s in sites if trial.suggest_categorical(f"replace:{s.name}", [False, True])]
        else:
            replaced = list(sites)
        if not replaced:
            return {}
        cfg = self._suggest_config(trial, "", no_none)
        return {s.name: cfg for s in replaced}

    def random_plan(self, sites: Sequence[SiteLike], rng: random.Random,
                    share: float | None = None) -> dict[str, CubeConfig]:
        """A random plan: a share of the sites (uniform in [0, 1] unless given, so dense and
        sparse plans both come up) replaced, each with a config the space allows there drawn
        uniformly; shared spaces use one config, fullcube replaces every site."""
        share = rng.random() if share is None else share
        chosen = list(sites) if self.mode == "fullcube" else [s for s in sites if rng.random() < share]
        if self.mode == "per_site":
            return {s.name: rng.choice(self.site_combos(s)) for s in chosen}
        if not chosen:
            return {}
        cfg = rng.choice(self.shared_combos(sites))
        return {s.name: cfg for s in chosen}

    def best_plan(self, sites: Sequence[SiteLike], gain: Callable[[str, CubeConfig], float]
                  ) -> dict[str, CubeConfig]:
        """The plan the space allows with the lowest total `gain(site, config)`: what putting
        `config` at `site` changes in a cost (FLOPs, latency) against its conv, sites priced
        independently (< 0: the block is cheaper). A site stays a conv where no block gains,
        unless the space is fullcube."""
        if self.mode == "per_site":
            plan = {}
            for s in sites:
                best = min(self.site_combos(s), key=lambda c, s=s: gain(s.name, c))
                if gain(s.name, best) < 0:
                    plan[s.name] = best
            return plan
        combos = self.shared_combos(sites)
        if self.mode == "fullcube":
            best = min(combos, key=lambda c: sum(gain(s.name, c) for s in sites))
            return {s.name: best for s in sites}
        best = min(combos, key=lambda c: sum(min(0.0, gain(s.name, c)) for s in sites))
        return {s.name: best for s in sites if gain(s.name, best) < 0}

    def _suggest_config(self, trial: Any, prefix: str, no_router_none: bool) -> CubeConfig:
        values = {}
        for knob in KNOBS:
            choices = list(getattr(self.knobs, knob))
            if knob == "router" and no_router_none:
                choices = [c for c in choices if c != "none"] or ["pre"]
            values[knob] = choices[0] if len(choices) == 1 else trial.suggest_categorical(
                f"{prefix}{knob}", choices)
        return CubeConfig(**values)

    def params_for(self, plan: dict[str, CubeConfig], sites: Sequence[SiteLike]) -> dict[str, Any]:
        """Trial parameters that make `sample_plan` return `plan` (for `study.enqueue_trial`)."""
        params: dict[str, Any] = {}
        no_none = any(self.no_router_none(s) for s in sites)
        if self.mode in ("per_site", "shared"):
            for s in sites:
                params[f"replace:{s.name}"] = s.name in plan
        for site_name, cfg in plan.items():
            prefix = f"{site_name}." if self.mode == "per_site" else ""
            site = next(s for s in sites if s.name == site_name)
            for knob in KNOBS:
                choices = list(getattr(self.knobs, knob))
                nn = no_none if self.mode != "per_site" else self.no_router_none(site)
                if knob == "router" and nn:
                    choices = [c for c in choices if c != "none"] or ["pre"]
                if len(choices) > 1:
                    value = getattr(cfg, knob)
                    params[f"{prefix}{knob}"] = value if value in choices else choices[0]
        return params

    def default_config(self) -> CubeConfig:
        """The enqueued FullCube's config: `CubeConfig()`'s value where allowed, else the first."""
        base = CubeConfig()
        return CubeConfig(**{k: getattr(base, k) if getattr(base, k) in getattr(self.knobs, k)
                             else getattr(self.knobs, k)[0] for k in KNOBS})


def shipped_spaces() -> list[str]:
    """Names of the spaces shipped inside the package (`SearchSpace.load(name)` reads them)."""
    return sorted(f.name.removesuffix(".yaml") for f in _SHIPPED.iterdir() if f.name.endswith(".yaml"))


def shipped_space_text(name: str) -> str:
    """The YAML text of a shipped space, e.g. to copy it and edit."""
    known = shipped_spaces()
    if name not in known:
        raise CubesearchError(f"unknown search space {name!r} (shipped: {', '.join(known)}; "
                              "or give a path to a .yaml file)")
    return (_SHIPPED / f"{name}.yaml").read_text()
