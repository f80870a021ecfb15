"""The demo job as data: what `cubesearch demo` searches and how it trains (the Cube block's
cost table it opens with is `cubesearch.flops.cost_table_rows`). Benchmarks that reproduce the
demo's trials import these too. No torch here: `cubesearch --help` reads these defaults.
"""

from __future__ import annotations

from typing import Any

DEMO_MODEL = "smp:Unet:resnet18"
DEMO_BUDGET = "70%"  # of the unconverted model's FLOPs at 3×512×512
DEMO_TRIALS = 10  # plans ranked on the first rung
DEMO_RUNGS = (3.0, 9.0)  # the search's default strategy (halving): see search.settings
# How the demo trains (SearchSettings fields): small enough for about 10 minutes on 2 CPU cores.
# `epochs_per_trial` is what a trial of `--strategy trials` trains (the benchmarks that reproduce
# the earlier demo's trials use it); the demo itself runs the default strategy over DEMO_RUNGS.
DEMO_TRAINING: dict[str, Any] = dict(epochs_per_trial=2.0, baseline_epochs=12.0, tile_size=64,
                                     train_tiles=384, val_tiles=48, distill_steps=100)
