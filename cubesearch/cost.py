"""FLOPs: fvcore is the truth (one multiply-accumulate = one FLOP, the paper's unit)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import torch
from torch import nn


def fvcore_flops(model: nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """fvcore's total for `model(*inputs)`; its warnings about unsupported ops are collected, not
    printed (they are about elementwise ops, which fvcore deliberately does not count)."""
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
            return int(analysis.total())
    finally:
        logger.setLevel(level)
