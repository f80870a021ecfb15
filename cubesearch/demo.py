"""The demo job as data: what `cubesearch demo` searches, how it trains, and the Cube block's
cost table it opens with. Benchmarks that reproduce the demo's trials import these too.
"""

from __future__ import annotations

from typing import Any

import torch

from cubesearch.blocks import CubeBlock, block_cost
from cubesearch.blocks.cost import conv_cost
from cubesearch.cost import fvcore_flops

DEMO_MODEL = "smp:Unet:resnet18"
DEMO_BUDGET = "70%"  # of the unconverted model's FLOPs at 3×512×512
DEMO_TRIALS = 10  # plans ranked on the first rung
DEMO_RUNGS = (3.0, 9.0)  # the search's default strategy (halving): see search.settings
# How the demo trains (SearchSettings fields): small enough for about 10 minutes on 2 CPU cores.
# `epochs_per_trial` is what a trial of `--strategy trials` trains (the benchmarks that reproduce
# the earlier demo's trials use it); the demo itself runs the default strategy over DEMO_RUNGS.
DEMO_TRAINING: dict[str, Any] = dict(epochs_per_trial=2.0, baseline_epochs=12.0, tile_size=64,
                                     train_tiles=384, val_tiles=48, distill_steps=100)


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
