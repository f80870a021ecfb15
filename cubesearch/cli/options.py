"""Options several commands spell the same way (the search's training settings): one
definition each, so `search` and `ablate` cannot drift apart."""

from __future__ import annotations

import json
from typing import Any

import typer

from cubesearch.errors import CubesearchError

MODEL_ARG = typer.Option(None, "--model-arg", help="KEY=VALUE passed to the model factory "
                        "(repeatable; VALUE read as JSON when it parses), e.g. width=32.")
FLOPS_INPUT = typer.Option("3x512x512", "--input-size", help="Reference input for FLOPs, CxHxW.")
TILE_SIZE = typer.Option(128, "--tile-size", help="Training tile size.")
TRAIN_TILES = typer.Option(192, "--train-tiles", help="Synthetic training tiles.")
VAL_TILES = typer.Option(64, "--val-tiles", help="Synthetic validation tiles.")
BATCH_SIZE = typer.Option(8, "--batch-size")
LR = typer.Option(2e-3, "--lr", help="Peak learning rate of the baseline and of a trial's new blocks.")
CLASSES = typer.Option(1, "--classes", help="Output classes (1: binary buildings).")
PRETRAINED = typer.Option(False, "--pretrained/--no-pretrained",
                          help="Load pretrained weights (needs a download).")

# The final recipe (`cubesearch.training.finetune.Recipe`): `finetune` and `calibrate`; unset
# (None) ones keep the recipe's defaults.
RECIPE_EPOCHS = typer.Option(16.0, "--epochs", help="Epochs of the final recipe (early stopping may "
                                                    "end it sooner).")
RECIPE_LR = typer.Option(None, "--lr", help="Peak learning rate of the warm-started weights "
                                            "(default 5e-4).")
BLOCK_LR = typer.Option(None, "--block-lr", help="Peak learning rate of the new Cube blocks "
                                                 "(default 2e-3).")
KD_WEIGHT = typer.Option(None, "--kd-weight", help="Weight of the logit distillation from the "
                                                   "baseline (default 0: none; it held the demo's "
                                                   "models back, see the kd-ablation benchmark).")
PATIENCE = typer.Option(None, "--patience", help="Stop after N epochs without a better val IoU "
                                                 "(default 4; 0: never stop early).")
DISTILL_STEPS = typer.Option(None, "--distill-steps", help="Batches fitting each block to the conv it "
                                                           "replaces first (default 100).")
FROM_SCRATCH = typer.Option(False, "--from-scratch",
                            help="Train from freshly initialised weights, the paired baseline too "
                                 "(the paper's protocol), instead of converting the trained "
                                 "baseline; all weights at --block-lr, no block distillation.")
TRUST_MODEL_CODE = typer.Option(False, "--trust-model-code",
                                help="Import the model.py / package.module:callable that a "
                                     "checkpoint, --plan or study names (only for code you trust).")


def model_args(items: list[str] | None) -> dict[str, Any]:
    """`--model-arg KEY=VALUE` (VALUE parsed as JSON when it can be: 512, true, [1,2], "x")."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CubesearchError(f"--model-arg {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


RUNGS = typer.Option("3,9", "--rungs", help="halving: epochs of the final recipe at each rung; plans "
                                            "are ranked on the first, the last is the front's training.")


def parse_rungs(text: str) -> tuple[float, ...]:
    """`3,9` → (3.0, 9.0); the settings check they rise."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CubesearchError(f"--rungs {text!r}: give epochs separated by commas, e.g. 1,3,9") from None
