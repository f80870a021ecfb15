"""`LatencyModel`: any plan's latency on the profiled device, from the latency table alone.

`latency(plan) = base − Σ_{replaced} conv(site) + Σ_{replaced} block(cfg, site)`, every term a
measured median (microseconds, summed over a site's calls), the same per-site additive form as
the FLOPs `CostModel`. Pricing a plan is a few dictionary look-ups.

Additivity is an approximation: a conv timed alone runs with its weights and input hot in cache
and without its neighbours' layout conversions. `Correction` fits the sum to a few measured
whole models on the device (least squares of `measured − base` on the removed conv time, the
added block time and the number of sites replaced) and is stored with the model's profile;
`predict_us` applies it, `raw_us` is the plain sum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cubesearch.blocks import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import close_names
from cubesearch.cost.latency.table import LatencyTable, block_key, conv_key
from cubesearch.plan.sites import Site
from cubesearch.plan.space import SearchSpace


@dataclass(frozen=True)
class Correction:
    """`measured − base ≈ a·(−removed) + b·added + c·sites` (µs), fitted per device and model.

    `a` scales the removed conv time, `b` the added block time, `c` is a per-replaced-site
    overhead. The plain sum is a = b = 1, c = 0.
    """

    a: float = 1.0
    b: float = 1.0
    c: float = 0.0
    n: int = 0  # whole-model measurements it was fitted on
    rms_pct: float | None = None  # fit residual, % of the measured latency

    def apply(self, base: float, removed: float, added: float, sites: int) -> float:
        return base - self.a * removed + self.b * added + self.c * sites

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "c": self.c, "n": self.n, "rms_pct": self.rms_pct}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Correction | None:
        if not data:
            return None
        return cls(a=float(data["a"]), b=float(data["b"]), c=float(data.get("c", 0.0)),
                   n=int(data.get("n", 0)), rms_pct=data.get("rms_pct"))


SCALE_BOUNDS = (1 / 3, 3.0)  # a fitted a or b outside this is noise, not a device's law


def _solve(rows: Sequence[tuple[float, float, int, float]], base: float, terms: int
           ) -> Correction | None:
    """Weighted least squares of one form: 3 = (−removed, added, sites), 2 = (−removed, added),
    1 = one common scale of (added − removed); None when the rows cannot determine it."""
    import numpy as np

    w = np.array([1.0 / m for *_, m in rows])
    y = np.array([m - base for *_, m in rows]) * w
    if terms == 1:
        d = np.array([a - r for r, a, _, _ in rows]) * w
        if float(d @ d) <= 0:
            return None
        scale = float(d @ y / (d @ d))
        return Correction(a=scale, b=scale, c=0.0, n=len(rows))
    x = np.array([[-r, a, n][:terms] for r, a, n, _ in rows], dtype=float) * w[:, None]
    if len(rows) <= terms or np.linalg.matrix_rank(x) < terms:
        return None
    sol, *_ = np.linalg.lstsq(x, y, rcond=None)
    coef = [float(v) for v in sol] + [0.0] * (3 - terms)
    return Correction(a=coef[0], b=coef[1], c=coef[2], n=len(rows))


def _rel_rms(corr: Correction, rows: Sequence[tuple[float, float, int, float]], base: float
             ) -> float:
    errs = [(corr.apply(base, r, a, n) - m) / m for r, a, n, m in rows]
    return math.sqrt(sum(e * e for e in errs) / len(errs)) * 100


def _plausible(corr: Correction | None) -> bool:
    lo, hi = SCALE_BOUNDS
    return corr is not None and all(math.isfinite(v) for v in (corr.a, corr.b, corr.c)) \
        and lo <= corr.a <= hi and lo <= corr.b <= hi


def _held_out_rms(rows: Sequence[tuple[float, float, int, float]], base: float, terms: int
                  ) -> float:
    """Leave-one-out relative error of a form: each plan predicted by the fit to the others."""
    errs = []
    for i, (r, a, n, m) in enumerate(rows):
        fit = _solve([*rows[:i], *rows[i + 1:]], base, terms)
        if not _plausible(fit):
            return math.inf
        errs.append((fit.apply(base, r, a, n) - m) / m)
    return math.sqrt(sum(e * e for e in errs) / len(errs)) * 100


def fit_correction(samples: Sequence[tuple[float, float, int, float]], base: float,
                   *, per_site: bool = True) -> Correction:
    """The correction that predicts *unseen* plans best, from the samples `(removed_us,
    added_us, n_sites, measured_us)`: weighted least squares (1/measured, so every plan's
    relative error counts alike) of `measured − base` in three forms — (−removed, added,
    sites), (−removed, added), one common scale — each judged by its leave-one-out error (every
    plan predicted by the fit to the others) against the plain sum's error. A form is kept only
    if it beats the plain sum held out and its scales are plausible (within `SCALE_BOUNDS`);
    else the plain sum (a = b = 1, c = 0). A few plans fit three terms exactly and predict the
    next badly: judged in-sample, that overfit won (r18 in eager at 1 thread: 35 % of plans
    within ±10 % corrected vs 96 % plain, benchmarks/results/latency.md)."""
    rows = [(r, a, n, m) for r, a, n, m in samples if m > 0]
    if not rows:
        return Correction()
    plain = Correction(n=len(rows))
    best, best_err = plain, _rel_rms(plain, rows, base)
    for terms in ((3, 2, 1) if per_site else (2, 1)):
        full = _solve(rows, base, terms)
        if not _plausible(full) or len(rows) < 3:
            continue
        err = _held_out_rms(rows, base, terms)
        if err < best_err:
            best, best_err = full, err
    return Correction(a=best.a, b=best.b, c=best.c, n=len(rows), rms_pct=_rel_rms(best, rows, base))


@dataclass(frozen=True)
class SiteShape:
    """What a site's time depends on (stored with the model's profile in the table)."""

    name: str
    in_channels: int
    out_channels: int
    stride: int
    groups: int
    bias: bool
    calls: tuple[tuple[int, int], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"in": self.in_channels, "out": self.out_channels, "stride": self.stride,
                "groups": self.groups, "bias": self.bias, "calls": [list(c) for c in self.calls]}

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> SiteShape:
        return cls(name=name, in_channels=int(d["in"]), out_channels=int(d["out"]),
                   stride=int(d["stride"]), groups=int(d["groups"]), bias=bool(d["bias"]),
                   calls=tuple((int(h), int(w)) for h, w in d["calls"]))

    @classmethod
    def of(cls, site: Any) -> SiteShape:
        return cls(name=site.name, in_channels=site.in_channels, out_channels=site.out_channels,
                   stride=site.stride, groups=site.groups, bias=bool(site.bias),
                   calls=tuple(tuple(c) for c in site.call_shapes))

    def conv_keys(self, layout: str) -> list[str]:
        return [conv_key(layout, self.in_channels, self.out_channels, self.stride, self.groups,
                         self.bias, hw) for hw in self.calls]

    def block_keys(self, layout: str, config: CubeConfig) -> list[str]:
        return [block_key(layout, self.in_channels, self.out_channels, self.stride, hw, config)
                for hw in self.calls]


class LatencyModel:
    """Microseconds of any plan of one model on the table's device (see the module docstring).

    `plan` may be a `Plan` or a mapping site name → `CubeConfig`, like the `CostModel`'s.
    """

    def __init__(self, table: LatencyTable, key: str) -> None:
        entry = table.model(key)
        self.table, self.key = table, key
        self.fingerprint = table.fingerprint
        self.layout: str = entry["layout"]
        self.base_us = float(entry["base_us"])
        self.sites = {n: SiteShape.from_dict(n, d) for n, d in entry["sites"].items()}
        self.correction = Correction.from_dict(entry.get("correction"))
        self._conv: dict[str, float] = {}
        self._block: dict[tuple[str, CubeConfig], float] = {}

    def _op(self, keys: Iterable[str], what: str) -> float:
        total = 0.0
        for k in keys:
            try:
                total += self.table.ops[k]
            except KeyError:
                raise CubesearchError(
                    f"{what} is not in the latency table ({k}); profile with the search space "
                    "that allows it (`cubesearch profile MODEL --space …`)") from None
        return total

    def _site(self, name: str) -> SiteShape:
        try:
            return self.sites[name]
        except KeyError:
            raise CubesearchError(f"site {name!r} was not profiled{close_names(name, list(self.sites))}"
                                  ) from None

    def conv_us(self, name: str) -> float:
        hit = self._conv.get(name)
        if hit is None:
            site = self._site(name)
            hit = self._conv[name] = self._op(site.conv_keys(self.layout), f"the conv at {name!r}")
        return hit

    def block_us(self, name: str, config: CubeConfig) -> float:
        hit = self._block.get((name, config))
        if hit is None:
            site = self._site(name)
            hit = self._block[(name, config)] = self._op(
                site.block_keys(self.layout, config), f"block {config.short()!r} at {name!r}")
        return hit

    def site_delta_us(self, name: str, config: CubeConfig) -> float:
        """Δ µs of replacing site `name` by a block with `config` (plain sum, uncorrected)."""
        return self.block_us(name, config) - self.conv_us(name)

    @staticmethod
    def _sites(plan: Any) -> Mapping[str, CubeConfig]:
        if hasattr(plan, "sites") and hasattr(plan, "insertions"):
            if plan.insertions:
                raise CubesearchError("the latency model prices replaced sites only, not "
                                      "insertions")
            return plan.sites
        return plan or {}

    def terms(self, plan: Any = None) -> tuple[float, float, int]:
        """(Σ removed conv µs, Σ added block µs, sites replaced)."""
        sites = self._sites(plan)
        removed = sum(self.conv_us(n) for n in sites)
        added = sum(self.block_us(n, c) for n, c in sites.items())
        return removed, added, len(sites)

    def raw_us(self, plan: Any = None) -> float:
        removed, added, _ = self.terms(plan)
        return self.base_us - removed + added

    def predict_us(self, plan: Any = None) -> float:
        removed, added, n = self.terms(plan)
        if self.correction is None or not n:
            return self.base_us - removed + added
        return self.correction.apply(self.base_us, removed, added, n)

    def latency_ms(self, plan: Any = None) -> float:
        return self.predict_us(plan) / 1e3

    # --- the fastest plan ----------------------------------------------------------------------

    def fastest_plan(self, space: SearchSpace, sites: Sequence[Site]) -> dict[str, CubeConfig]:
        """The lowest-latency plan the space can produce (sites priced independently)."""
        def gain(name: str, cfg: CubeConfig) -> float:  # < 0: replacing is faster
            if self.correction is None:
                return self.site_delta_us(name, cfg)
            c = self.correction
            return c.b * self.block_us(name, cfg) - c.a * self.conv_us(name) + c.c

        return space.best_plan(sites, gain)

