"""FLOPs as fvcore counts them: the truth (one multiply-accumulate = one FLOP, the paper's unit).

- `fvcore_flops(model, inputs)`: fvcore's total, its warnings collected instead of printed.
- `count_flops(model, input_size)`: the same at a zero input of that size, in whatever mode
  (train / eval) the model is in. fvcore counts BatchNorm as 5·numel in train mode and 2·numel
  in eval, so compare counts taken in the same mode. Eval is the reference everywhere here:
  it is how a model is deployed, and train-mode BatchNorm cannot run a batch of 1 through
  layers that pool to 1×1 (PSPNet, DeepLabV3's image pooling).
- `reference_flops(model, input_size)`: `count_flops` in eval mode, the model's own mode kept.

`cubesearch.cost.pricing.CostModel` predicts these counts from the sites without running anything.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cubesearch.blocks import CubeBlock, block_cost
from cubesearch.blocks.cost import conv_cost
from cubesearch.core.errors import CubesearchError, one_line
from cubesearch.core.helpers import eval_mode, parse_input_size, zero_input


def fvcore_flops(model: nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """fvcore's total for `model(*inputs)`; its warnings about unsupported ops are collected, not
    printed (they are about elementwise ops, which fvcore deliberately does not count)."""
    return fvcore_counts(model, inputs)[0]


def fvcore_counts(model: nn.Module, inputs: Sequence[torch.Tensor]) -> tuple[int, dict[str, int]]:
    """fvcore's total and its count per module (qualified name → FLOPs of everything that ran
    inside that module, summed over its calls), from one analysis."""
    with warnings.catch_warnings():  # fvcore's import scripts its focal loss: torch's deprecation
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated",
                                category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis  # lazy: fvcore is slow to import, and only counting needs it

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
    size = parse_input_size(input_size)
    x = zero_input(model, size, batch)
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
    with eval_mode(model):
        return count_flops_by_module(model, input_size, batch)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cost_table_rows(channels: int = 96, size: int = 128) -> list[dict[str, Any]]:
    """Params and FLOPs of CubeBlock(C, C) against nn.Conv2d(C, C, 3) at C×size×size: counted
    on the modules, from the formulas, and by fvcore (train mode, batch 1)."""
    x = torch.zeros(1, channels, size, size)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
    block = CubeBlock(channels, channels)
    rows = []
    for name, module, analytic in (
        ("Conv2d 3×3", conv, conv_cost(channels, channels, 3, 1, size)),
        ("CubeBlock", block, block_cost(channels, channels, None, 1, size)),
    ):
        rows.append({
            "module": name,
            "params": sum(p.numel() for p in module.parameters()),
            "params_formula": analytic.params,
            "conv_gmacs_formula": analytic.conv_macs_spec / 1e9,
            "gflops_fvcore": fvcore_flops(module.train(), (x,)) / 1e9,
        })
    return rows
