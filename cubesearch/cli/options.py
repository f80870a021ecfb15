"""Options several commands spell the same way (the search's training settings): one
definition each, so `search` and `ablate` cannot drift apart."""

from __future__ import annotations

import typer

FLOPS_INPUT = typer.Option("3x512x512", "--input-size", help="Reference input for FLOPs, CxHxW.")
TILE_SIZE = typer.Option(128, "--tile-size", help="Training tile size.")
TRAIN_TILES = typer.Option(192, "--train-tiles", help="Synthetic training tiles.")
VAL_TILES = typer.Option(64, "--val-tiles", help="Synthetic validation tiles.")
BATCH_SIZE = typer.Option(8, "--batch-size")
LR = typer.Option(2e-3, "--lr", help="Peak learning rate of the baseline and of a trial's new blocks.")
CLASSES = typer.Option(1, "--classes", help="Output classes (1: binary buildings).")
PRETRAINED = typer.Option(False, "--pretrained/--no-pretrained",
                          help="Load pretrained weights (needs a download).")
