"""`CostModel`: any plan's FLOPs and parameters from the Sites alone (docs/design.md),
`base − Σ site MACs + Σ block MACs(cfg, shape)`, equal to fvcore's eval-mode count of the
converted model; microseconds per plan (per-site tables, filled on first use).

The cost model prices Cube-only plans. A plan that narrows convs (`Plan.widths`) changes the
shapes of everything coupled with them, so its cost is counted on the built model:
`plan_flops_params` (fvcore, like every reported figure).

fvcore's own counts (`count_flops`, `reference_flops`, …) live in `cubesearch.models.flops` and are
re-exported here, where the public API has always had them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from cubesearch.blocks import CubeConfig, block_cost
from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import close_names
from cubesearch.models.flops import (
    count_flops,
    count_flops_by_module,
    count_params,
    fvcore_counts,
    fvcore_flops,
    reference_flops,
    reference_flops_by_module,
)
from cubesearch.plan.conversion import convert
from cubesearch.plan.plan import Plan
from cubesearch.plan.sites import Site, SiteReport

__all__ = ["CostModel", "count_flops", "count_flops_by_module", "count_params", "fvcore_counts",
           "fvcore_flops", "plan_flops_params", "reference_flops", "reference_flops_by_module"]

PlanLike = Plan | Mapping[str, CubeConfig] | None


class CostModel:
    """GFLOPs and parameters of any plan, from the Sites alone.

    `flops(plan) = base − Σ_{replaced} conv MACs + Σ_{replaced} block FLOPs(cfg, every call's
    shape) + Σ_{insertions} block FLOPs(cfg, the module's output shape)`, with the block FLOPs
    from `cubesearch.blocks.block_cost`, which reproduces fvcore's count of a block. Counts are
    eval mode, batch 1, like `reference_flops` (pass `training=True` together with a base
    counted in train mode to price train-mode counts instead).

    `plan` may be a `Plan`, or a mapping site name → `CubeConfig` (with `insertions` apart).
    """

    def __init__(self, sites: SiteReport | Iterable[Site], base_flops: int | None = None,
                 base_params: int | None = None, *, output_shapes: Mapping[str, Any] | None = None,
                 training: bool = False) -> None:
        if isinstance(sites, SiteReport):
            report = sites
            base_flops = report.base_flops if base_flops is None else base_flops
            base_params = report.base_params if base_params is None else base_params
            output_shapes = report.output_shapes if output_shapes is None else output_shapes
            sites = report.sites
        if base_flops is None:
            raise CubesearchError("the cost model needs the model's fvcore FLOPs as its base "
                                  "(find_sites(..., flops=True) counts them)")
        self.base_flops = int(base_flops)
        self.base_params = int(base_params or 0)
        self.training = training
        self.sites = {s.name: s for s in sites}
        self.output_shapes = {k: [tuple(s) for s in v] for k, v in (output_shapes or {}).items()}
        self._tables: dict[str, dict[CubeConfig, tuple[int, int]]] = {n: {} for n in self.sites}
        self._inserts: dict[str, dict[CubeConfig, tuple[int, int]]] = {}

    @classmethod
    def from_report(cls, report: SiteReport, *, training: bool = False) -> CostModel:
        return cls(report, training=training)

    # --- per-site tables ---------------------------------------------------------------------

    def site_delta(self, name: str, config: CubeConfig) -> tuple[int, int]:
        """(Δ FLOPs, Δ params) of replacing site `name` by a block with `config`."""
        try:
            table = self._tables[name]
        except KeyError:
            raise CubesearchError(f"unknown site {name!r}{close_names(name, list(self.sites))}"
                                  ) from None
        hit = table.get(config)
        if hit is None:
            site = self.sites[name]
            # less what fvcore counted inside the conv module: its MACs, plus whatever else its
            # forward does (weight standardisation in timm's StdConv2d / ScaledStdConv2d…)
            flops, params = site.block_cost(config, training=self.training)
            hit = table[config] = (flops - site.conv_flops, params - site.params)
        return hit

    def insertion_delta(self, name: str, config: CubeConfig) -> tuple[int, int]:
        """(Δ FLOPs, Δ params) of inserting `x + block(x)` after module `name`."""
        table = self._inserts.setdefault(name, {})
        hit = table.get(config)
        if hit is None:
            shapes = self.output_shapes.get(name)
            if not shapes:
                raise CubesearchError(
                    f"no output shape recorded for insertion point {name!r} "
                    "(find_sites(..., insertions=[...]) records it)")
            flops = params = 0
            for shape in shapes:
                if len(shape) != 4:
                    raise CubesearchError(
                        f"cannot insert a block after {name!r}: its output has shape "
                        f"{tuple(shape)}, a block needs (B, C, H, W)")
                _, c, h, w = shape
                cost = block_cost(c, c, config, 1, h, w, training=self.training)
                flops += cost.flops
                params = cost.params
            hit = table[config] = (flops, params)
        return hit

    def precompute(self, configs: Iterable[CubeConfig]) -> CostModel:
        """Fill the tables for these configs at every site (else they fill on first use)."""
        configs = list(configs)
        for name in self.sites:
            for cfg in configs:
                self.site_delta(name, cfg)
        return self

    # --- plans -------------------------------------------------------------------------------

    @staticmethod
    def _split(plan: PlanLike, insertions: Mapping[str, CubeConfig] | None
               ) -> tuple[Mapping[str, CubeConfig], Mapping[str, CubeConfig]]:
        if getattr(plan, "widths", None):
            raise CubesearchError("the cost model prices Cube-only plans; a plan with widths is "
                                  "priced on the built model (cubesearch.cost.pricing.plan_flops_params)")
        if hasattr(plan, "sites") and hasattr(plan, "insertions"):
            return plan.sites, plan.insertions if insertions is None else insertions
        return plan or {}, insertions or {}

    def cost(self, plan: PlanLike = None, insertions: Mapping[str, CubeConfig] | None = None
             ) -> tuple[int, int]:
        """(FLOPs, params) of the converted model."""
        sites, inserts = self._split(plan, insertions)
        flops, params = self.base_flops, self.base_params
        for name, cfg in sites.items():
            df, dp = self.site_delta(name, cfg)
            flops += df
            params += dp
        for name, cfg in inserts.items():
            df, dp = self.insertion_delta(name, cfg)
            flops += df
            params += dp
        return flops, params

    def flops(self, plan: PlanLike = None, insertions: Mapping[str, CubeConfig] | None = None) -> int:
        sites, inserts = self._split(plan, insertions)
        total = self.base_flops
        tables = self._tables
        for name, cfg in sites.items():
            table = tables.get(name)
            hit = table.get(cfg) if table is not None else None
            total += (hit or self.site_delta(name, cfg))[0]
        for name, cfg in inserts.items():
            total += self.insertion_delta(name, cfg)[0]
        return total

    def params(self, plan: PlanLike = None, insertions: Mapping[str, CubeConfig] | None = None) -> int:
        return self.cost(plan, insertions)[1]

    def gflops(self, plan: PlanLike = None, insertions: Mapping[str, CubeConfig] | None = None) -> float:
        return self.flops(plan, insertions) / 1e9


def plan_flops_params(model: nn.Module | Callable[[], nn.Module], plan: Plan,
                      input_size: Sequence[int] | None = None) -> tuple[int, int]:
    """(FLOPs, params) of `convert(model, plan)`, counted on the built model: fvcore in eval mode
    at batch 1 and `plan.input_size` (or `input_size`), the unit of `CostModel` and of every
    reported figure; params are all of the built model's parameters.

    The exact cost of a chosen plan, whatever it holds: this is how a plan with `widths`
    (narrowed convs, alone or mixed with Cube sites) is priced, since narrowing reshapes every
    layer coupled with the conv. `model` is the unconverted model (left untouched) or a
    zero-argument factory building it. Costs a real forward or two at the input size: price
    cells once and cache, not per candidate plan.
    """
    base = model if isinstance(model, nn.Module) else model()
    size = tuple(input_size or plan.input_size)
    built = convert(base, plan, input_size=size)
    return reference_flops(built, size), count_params(built)
