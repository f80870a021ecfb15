"""FLOPs: fvcore is the truth (one multiply-accumulate = one FLOP, the paper's unit).

- `fvcore_flops(model, inputs)`: fvcore's total, its warnings collected instead of printed.
- `count_flops(model, input_size)`: the same at a zero input of that size, in whatever mode
  (train / eval) the model is in. fvcore counts BatchNorm as 5·numel in train mode and 2·numel
  in eval, so compare counts taken in the same mode. Eval is the reference everywhere here:
  it is how a model is deployed, and train-mode BatchNorm cannot run a batch of 1 through
  layers that pool to 1×1 (PSPNet, DeepLabV3's image pooling).
- `reference_flops(model, input_size)`: `count_flops` in eval mode, the model's own mode kept.
- `CostModel`: any plan's FLOPs and parameters from the Sites alone (DESIGN.md §2),
  `base − Σ site MACs + Σ block MACs(cfg, shape)`, equal to fvcore's eval-mode count of the
  converted model; microseconds per plan (per-site tables, filled on first use).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cubesearch.blocks import CubeConfig, block_cost
from cubesearch.errors import CubesearchError, one_line


def fvcore_flops(model: nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """fvcore's total for `model(*inputs)`; its warnings about unsupported ops are collected, not
    printed (they are about elementwise ops, which fvcore deliberately does not count)."""
    return fvcore_counts(model, inputs)[0]


def fvcore_counts(model: nn.Module, inputs: Sequence[torch.Tensor]) -> tuple[int, dict[str, int]]:
    """fvcore's total and its count per module (qualified name → FLOPs of everything that ran
    inside that module, summed over its calls), from one analysis."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, tuple(inputs))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            total = int(analysis.total())
            return total, {name: int(n) for name, n in analysis.by_module().items()}
    finally:
        logger.setLevel(level)


def count_flops(model: nn.Module, input_size: Sequence[int] | str = (3, 512, 512), batch: int = 1
                ) -> int:
    """fvcore FLOPs of `model` on a zero input `(batch, *input_size)`, in the model's current
    train/eval mode (see the module docstring; `reference_flops` for the eval-mode count)."""
    return count_flops_by_module(model, input_size, batch)[0]


def count_flops_by_module(model: nn.Module, input_size: Sequence[int] | str = (3, 512, 512),
                          batch: int = 1) -> tuple[int, dict[str, int]]:
    """`count_flops` and fvcore's count per module, from one analysis."""
    from cubesearch.sites import model_device, model_dtype, parse_input_size

    size = parse_input_size(input_size)
    x = torch.zeros(batch, *size, device=model_device(model), dtype=model_dtype(model))
    try:
        return fvcore_counts(model, (x,))
    except Exception as exc:  # noqa: BLE001 - one clear line
        text = one_line(exc)
        hint = ""
        if "more than 1 value per channel" in text:
            hint = " (train-mode BatchNorm needs batch > 1 here: count in eval mode or batch=2)"
        c, h, w = size
        raise CubesearchError(
            f"fvcore could not count FLOPs at {batch}×{c}×{h}×{w}: {type(exc).__name__}: {text}{hint}"
        ) from exc


def reference_flops(model: nn.Module, input_size: Sequence[int] | str = (3, 512, 512),
                    batch: int = 1) -> int:
    """`count_flops` in eval mode; every submodule's own train/eval flag is restored after."""
    return reference_flops_by_module(model, input_size, batch)[0]


def reference_flops_by_module(model: nn.Module, input_size: Sequence[int] | str = (3, 512, 512),
                              batch: int = 1) -> tuple[int, dict[str, int]]:
    """`reference_flops` and fvcore's eval-mode count per module."""
    from cubesearch.sites import eval_mode

    with eval_mode(model):
        return count_flops_by_module(model, input_size, batch)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class CostModel:
    """GFLOPs and parameters of any plan, from the Sites alone.

    `flops(plan) = base − Σ_{replaced} conv MACs + Σ_{replaced} block FLOPs(cfg, every call's
    shape) + Σ_{insertions} block FLOPs(cfg, the module's output shape)`, with the block FLOPs
    from `cubesearch.blocks.block_cost`, which reproduces fvcore's count of a block. Counts are
    eval mode, batch 1, like `reference_flops` (pass `training=True` together with a base
    counted in train mode to price train-mode counts instead).

    `plan` may be a `Plan`, or a mapping site name → `CubeConfig` (with `insertions` apart).
    """

    def __init__(self, sites: Iterable[Any], base_flops: int | None = None,
                 base_params: int | None = None, *, output_shapes: Mapping[str, Any] | None = None,
                 training: bool = False) -> None:
        from cubesearch.sites import SiteReport

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
    def from_report(cls, report: Any, *, training: bool = False) -> CostModel:
        return cls(report, training=training)

    # --- per-site tables ---------------------------------------------------------------------

    def site_delta(self, name: str, config: CubeConfig) -> tuple[int, int]:
        """(Δ FLOPs, Δ params) of replacing site `name` by a block with `config`."""
        try:
            table = self._tables[name]
        except KeyError:
            from cubesearch.sites import close_names

            raise CubesearchError(f"unknown site {name!r}{close_names(name, list(self.sites))}"
                                  ) from None
        hit = table.get(config)
        if hit is None:
            site = self.sites[name]
            # what fvcore counted inside the conv module: its MACs, plus whatever else its
            # forward does (weight standardisation in timm's StdConv2d / ScaledStdConv2d…)
            flops = -(site.macs if site.flops is None else site.flops)
            params = 0
            for h, w in site.call_shapes:
                cost = block_cost(site.in_channels, site.out_channels, config, site.stride, h, w,
                                  training=self.training)
                flops += cost.flops
                params = cost.params
            params -= site.params
            hit = table[config] = (flops, params)
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
    def _split(plan: Any, insertions: Mapping[str, CubeConfig] | None
               ) -> tuple[Mapping[str, CubeConfig], Mapping[str, CubeConfig]]:
        if hasattr(plan, "sites") and hasattr(plan, "insertions"):
            return plan.sites, plan.insertions if insertions is None else insertions
        return plan or {}, insertions or {}

    def cost(self, plan: Any = None, insertions: Mapping[str, CubeConfig] | None = None
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

    def flops(self, plan: Any = None, insertions: Mapping[str, CubeConfig] | None = None) -> int:
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

    def params(self, plan: Any = None, insertions: Mapping[str, CubeConfig] | None = None) -> int:
        return self.cost(plan, insertions)[1]

    def gflops(self, plan: Any = None, insertions: Mapping[str, CubeConfig] | None = None) -> float:
        return self.flops(plan, insertions) / 1e9
