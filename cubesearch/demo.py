"""The demo job as data: what `cubesearch demo` searches and how it trains (the Cube block's
cost table it opens with is `cubesearch.flops.cost_table_rows`). Benchmarks that reproduce the
demo's trials import these too. No torch here: `cubesearch --help` reads these defaults.
"""

from __future__ import annotations

from typing import Any

DEMO_MODEL = "smp:Unet:resnet18"
DEMO_BUDGET = "70%"  # of the unconverted model's FLOPs at 3×512×512
DEMO_TRIALS = 6  # plans ranked on the first rung, the unconverted and FullCube references included
DEMO_RUNGS = (2.0, 5.0)  # halving (the search's default strategy): rank on 2 epochs, train on to 5
# How the demo trains (SearchSettings fields), chosen by measurement for a first run of at most
# 15 minutes on an idle 2-core CPU, install included (benchmarks/results/demo.md): 10.3 CPU-minutes
# on one thread, where the earlier setting (12-epoch baseline, rungs 3,9, 384 tiles) took 34.6.
# What the cut costs: the paired baseline reaches IoU 0.34 after 5 epochs on 192 tiles, not 0.63.
DEMO_SEARCH: dict[str, Any] = dict(baseline_epochs=5.0, tile_size=64, train_tiles=192, val_tiles=48,
                                   distill_steps=25)
# The earlier demo's training, which benchmarks/trial_lr.py (and the retired one-shot
# benchmarks, results/oneshot*.md) reproduce (trials of `epochs_per_trial`): kept as those
# results were measured.
DEMO_TRAINING: dict[str, Any] = dict(epochs_per_trial=2.0, baseline_epochs=12.0, tile_size=64,
                                     train_tiles=384, val_tiles=48, distill_steps=100)
