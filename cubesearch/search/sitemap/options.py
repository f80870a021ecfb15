"""What the map measures at a site: keep its conv, each Cube config the space allows there, and
(a space with `widths`, as `joint`) the conv narrowed to each width that differs there
(`SearchSpace.site_widths`).

A space whose knobs allow many configs per site (the `default` space: 144) is scored on a stated
subset, the one `ablate` reads its rows from: the default config (`SearchSpace.default_config`,
the paper's block where the space allows it) and every config that differs from it in one knob
(`knob_values`; `parse_knob` reads `ablate --knob`). `subset_rule` says in words which subset a
map holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cubesearch.blocks import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.plan.plan import router_problem
from cubesearch.plan.space import KNOBS, SearchSpace, SiteLike

KEEP = "keep"
SUBSETS = ("auto", "all", "one-knob")
# "auto": every config while a site has at most this many, else the one-knob subset
MAX_FULL = 12

Subset = Literal["auto", "all", "one-knob"]
# The paper's axes first (Tab. 4: router, attention; Tab. 3: lattice stride; depth), then the rest.
KNOB_ORDER = ("router", "attention", "lattice_stride", "depth", "groups", "fusion_kernel", "act")
DEFAULT = "default"  # the one-knob subset's row of the default config (`SiteOption.change`)


@dataclass(frozen=True)
class SiteOption:
    """One option at a site: `keep` (the conv as it is), a Cube config (`config`), or the conv
    narrowed to a kept fraction `width` of its output channels."""

    name: str  # stable: "keep", the config's `short()` label, or "width=R"
    kind: Literal["keep", "cube", "width"]
    config: CubeConfig | None = None
    change: str = ""  # the one-knob subset's row: "default" or "knob=value"; "" otherwise
    width: float | None = None

    @property
    def label(self) -> str:
        """What a plot or table shows: keep, default, router=post…, or the config."""
        return self.change or self.name

    def to_dict(self) -> dict[str, Any]:
        return {"option": self.name, "kind": self.kind, "change": self.change,
                "config": self.config.to_dict() if self.config is not None else None,
                "width": self.width}


KEEP_OPTION = SiteOption(KEEP, "keep")


def cube_option(config: CubeConfig, change: str = "") -> SiteOption:
    return SiteOption(config.short(), "cube", config, change)


def width_option(ratio: float) -> SiteOption:
    return SiteOption(f"width={ratio:g}", "width", width=ratio)


def resolve_subset(space: SearchSpace, sites: list[SiteLike], subset: str = "auto") -> str:
    """`all` or `one-knob`: what `subset` means for this space (`auto`: all configs while every
    site has at most MAX_FULL, else the one-knob subset)."""
    if subset not in SUBSETS:
        raise CubesearchError(f"--subset {subset!r}: choose from {', '.join(SUBSETS)}")
    if subset != "auto":
        return subset
    largest = max((len(space.site_combos(s)) for s in sites), default=0)
    return "all" if largest <= MAX_FULL else "one-knob"


def site_options(space: SearchSpace, site: SiteLike, subset: str) -> list[SiteOption]:
    """`keep`, the Cube configs of `subset` (`all` / `one-knob`) that the space allows at
    `site` (router 'none' only where the channels take it), then its widths."""
    widths = [width_option(r) for r in space.site_widths(site)]
    allowed = space.site_combos(site)
    if subset == "all":
        return [KEEP_OPTION, *(cube_option(c) for c in allowed), *widths]
    default = space.default_config()
    rows = [(DEFAULT, default)] + [(f"{k}={_show(v)}", CubeConfig(**{**default.to_dict(), k: v}))
                                   for k, v in knob_values(space, default)]
    return [KEEP_OPTION, *(cube_option(cfg, change) for change, cfg in rows
                           if cfg in allowed and router_problem(site.in_channels, site.out_channels,
                                                                cfg) is None), *widths]


def subset_rule(space: SearchSpace, subset: str) -> str:
    """The subset in words, as map.json and the CLI state it."""
    widths = (f"; and each width {', '.join(f'{r:g}' for r in space.widths)} that keeps a "
              "different channel count at the site" if space.widths else "")
    if subset == "all":
        return f"every Cube config space {space.name!r} allows at each site, and keep{widths}"
    return (f"one-knob subset of space {space.name!r}: keep, the default config "
            f"`{space.default_config().short()}` and each config that differs from it in one knob "
            f"(as `cubesearch ablate` rows){widths}")


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def parse_knob(text: str) -> tuple[str, list[Any] | None]:
    """`router` → ("router", None: every value the space allows); `depth=1,2` → ("depth", [1, 2]).
    Values are read as the knob's type (`attention=off`, `groups=2`)."""
    name, eq, values = str(text).partition("=")
    name = name.strip().replace("-", "_")
    if name not in KNOBS:
        raise CubesearchError(f"--knob {text!r}: unknown knob {name!r} (knobs: {', '.join(KNOB_ORDER)})")
    if not eq:
        return name, None
    parsed = [_knob_value(name, v.strip(), text) for v in values.split(",") if v.strip()]
    if not parsed:
        raise CubesearchError(f"--knob {text!r}: no value after '=' (e.g. --knob {name}=...)")
    return name, parsed


def _knob_value(knob: str, raw: str, text: str) -> Any:
    if knob == "attention":
        flags = {"true": True, "on": True, "yes": True, "1": True,
                 "false": False, "off": False, "no": False, "0": False}
        if raw.lower() not in flags:
            raise CubesearchError(f"--knob {text!r}: attention is on or off, not {raw!r}")
        return flags[raw.lower()]
    if knob in ("router", "act"):
        return raw
    try:
        return int(raw)
    except ValueError:
        raise CubesearchError(f"--knob {text!r}: {knob} takes integers, not {raw!r}") from None


def knob_values(space: SearchSpace, default: CubeConfig,
                knobs: Mapping[str, Sequence[Any] | None] | Iterable[str] | None = None
                ) -> list[tuple[str, Any]]:
    """(knob, value) of every row besides the default: each value the space allows that differs
    from the default config's, for the knobs asked (all by default). A value the space does not
    allow is an error naming `--knob`."""
    if knobs is None:
        asked: dict[str, Sequence[Any] | None] = {k: None for k in KNOB_ORDER}
    elif isinstance(knobs, Mapping):
        asked = dict(knobs)
    else:
        asked = dict(parse_knob(k) if isinstance(k, str) else k for k in knobs)
    out = []
    for knob in sorted(asked, key=KNOB_ORDER.index):
        if knob not in KNOBS:
            raise CubesearchError(f"--knob {knob!r}: unknown knob (knobs: {', '.join(KNOB_ORDER)})")
        allowed = list(getattr(space.knobs, knob))
        values = asked[knob]
        if values is not None:
            bad = [v for v in values if v not in allowed or type(v) is not type(allowed[0])]
            if bad:
                raise CubesearchError(
                    f"--knob {knob}={_show(bad[0])}: space {space.name!r} allows {knob} "
                    f"{', '.join(_show(v) for v in allowed)}")
        chosen = [v for v in (allowed if values is None else values) if v != getattr(default, knob)]
        if not chosen and knobs is not None:
            raise CubesearchError(
                f"--knob {knob}: nothing to ablate: space {space.name!r} allows {knob} "
                f"{', '.join(_show(v) for v in allowed)}, and the default config has "
                f"{_show(getattr(default, knob))}")
        out += [(knob, v) for v in chosen]
    return out
