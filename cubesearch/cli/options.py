"""Options several commands spell the same way: one definition each, so the commands cannot
drift apart, and the panels `--help` groups them in (Typer's `rich_help_panel`).

An option a search strategy reads only sometimes (`--epochs-per-trial`, `--rungs`, …) defaults
to None here: unset, the settings fill in their default; given, it is checked against the
strategy (`cubesearch.search.settings.check_strategy_options`), never ignored.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from cubesearch.core.errors import CubesearchError

# --help panels, in the order a user meets them
BUDGET_PANEL = "Budget and objectives"
STRATEGY_PANEL = "Strategy"
TRAINING_PANEL = "Training"
RECIPE_PANEL = "Final recipe"
DATA_PANEL = "Data"
STORAGE_PANEL = "Storage"
RAY_PANEL = "Ray"
OUTPUT_PANEL = "Output"
MODEL_PANEL = "Model"

def option(default: Any, *flags_panel_help: str, **kw: Any) -> Any:
    """`option(default, "--flag"[, "-f"], PANEL, "help")`: a Typer option in its `--help` panel."""
    *flags, panel, help = flags_panel_help
    return typer.Option(default, *flags, help=help, rich_help_panel=panel, **kw)


MODEL_HELP = "Model spec: timm:NAME, smp:ARCH:ENCODER, path/to/model.py[:NAME], package.module:callable."
MODEL_SPEC = typer.Argument(..., help=MODEL_HELP)
MODEL_ARG = typer.Option(None, "--model-arg", help="KEY=VALUE passed to the model factory "
                         "(repeatable; VALUE read as JSON when it parses), e.g. width=32.",
                         rich_help_panel=MODEL_PANEL)
FLOPS_INPUT = typer.Option("3x512x512", "--input-size", help="Reference input for FLOPs, CxHxW.",
                           rich_help_panel=BUDGET_PANEL)
CLASSES = typer.Option(1, "--classes", help="Output classes (1: binary buildings).",
                       rich_help_panel=MODEL_PANEL)
PRETRAINED = typer.Option(False, "--pretrained/--no-pretrained",
                          help="Load pretrained weights (needs a download).",
                          rich_help_panel=MODEL_PANEL)
SPACE = typer.Option("default", "--space", help="Search space: default, shared, fullcube, paper, or "
                     "a .yaml (the values each knob may take).", rich_help_panel=STRATEGY_PANEL)

# The data a search trains on
DATA = typer.Option("synthetic", "--data", help="synthetic, or a dataset folder.",
                    rich_help_panel=DATA_PANEL)
TILE_SIZE = typer.Option(128, "--tile-size", help="Training tile size.", rich_help_panel=DATA_PANEL)
TRAIN_TILES = typer.Option(192, "--train-tiles", help="Synthetic training tiles.",
                           rich_help_panel=DATA_PANEL)
VAL_TILES = typer.Option(64, "--val-tiles", help="Synthetic validation tiles.",
                         rich_help_panel=DATA_PANEL)
VAL_SPLIT = typer.Option(None, "--val-split", help="Fraction held out for validation (folders "
                         "without val/).", rich_help_panel=DATA_PANEL)
CROPS_PER_IMAGE = typer.Option(None, "--crops-per-image", help="Random training crops per image and "
                               "epoch (default: as many tiles as the image holds).",
                               rich_help_panel=DATA_PANEL)
WORKERS = typer.Option(None, "--workers", help="Data-loader worker processes (default 0).",
                       rich_help_panel=DATA_PANEL)
SEED = typer.Option(0, "--seed", help="Seed of the baseline, the synthetic tiles and the sampler.",
                    rich_help_panel=DATA_PANEL)

# How a search trains its baseline and plans
BATCH_SIZE = typer.Option(8, "--batch-size", help="Training batch size.",
                          rich_help_panel=TRAINING_PANEL)
LR = typer.Option(2e-3, "--lr", help="Peak learning rate of the baseline and of a trial's new blocks.",
                  rich_help_panel=TRAINING_PANEL)
TRIAL_LR = typer.Option(None, "--trial-lr", help="Peak learning rate of the weights a trial takes "
                        "from the trained baseline (default: --lr / 4).",
                        rich_help_panel=TRAINING_PANEL)
BASELINE_EPOCHS = typer.Option(None, "--baseline-epochs", help="Epochs of the baseline (default: "
                               "the top rung's with halving, else --epochs-per-trial).",
                               rich_help_panel=TRAINING_PANEL)
SEARCH_DISTILL_STEPS = typer.Option(100, "--distill-steps", min=0, help="Fit each Cube block to the "
                                    "conv it replaces for N batches before a plan trains "
                                    "(0: off); every strategy does.",
                                    rich_help_panel=TRAINING_PANEL)
EPOCHS_PER_TRIAL = typer.Option(None, "--epochs-per-trial", help="Training epochs of each trial "
                                "(default 1; fractions allowed): --strategy trials. Under "
                                "--strategy auto it selects trials.",
                                rich_help_panel=STRATEGY_PANEL)

# The final recipe (`cubesearch.training.finetune.Recipe`): `finetune` and `calibrate`; unset
# (None) ones keep the recipe's defaults.
RECIPE_EPOCHS = typer.Option(16.0, "--epochs", help="Epochs of the final recipe (early stopping may "
                             "end it sooner).", rich_help_panel=RECIPE_PANEL)


def recipe_option(flag: str, help: str) -> Any:
    """A final-recipe option: unset (None), it keeps the recipe's default (named in `help`)."""
    return typer.Option(None, flag, help=help, rich_help_panel=RECIPE_PANEL)


RECIPE_LR = recipe_option("--lr", "Peak learning rate of the warm-started weights (default 5e-4).")
BLOCK_LR = recipe_option("--block-lr", "Peak learning rate of the new Cube blocks (default 2e-3).")
KD_WEIGHT = recipe_option("--kd-weight", "Weight of the logit distillation from the baseline (default "
                          "0: none; it held the demo's models back, see the kd-ablation benchmark).")
PATIENCE = recipe_option("--patience", "Stop after N epochs without a better val IoU (default 4; 0: "
                         "never stop early).")
DISTILL_STEPS = recipe_option("--distill-steps", "Batches fitting each block to the conv it replaces "
                              "first (default 100).")
FROM_SCRATCH = typer.Option(False, "--from-scratch",
                            help="Train from freshly initialised weights, the paired baseline too "
                                 "(the paper's protocol), instead of converting the trained "
                                 "baseline; all weights at --block-lr, no block distillation.",
                            rich_help_panel=RECIPE_PANEL)

# Where a study is and what is printed
STUDY = typer.Option(None, "--study", help="Study name (needed when the storage holds several).",
                     rich_help_panel=STORAGE_PANEL)
SOURCE = typer.Argument(..., help="A search's --out folder, or an Optuna storage URL.")
DEVICE = typer.Option(None, "--device", help="auto (the default: CUDA if there is one), cpu, "
                      "cuda, cuda:1, …", rich_help_panel=TRAINING_PANEL)
ADDRESS = typer.Option(None, "--address", help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT "
                       "(default: the study's, else a local Ray instance).", rich_help_panel=RAY_PANEL)
AS_JSON = typer.Option(False, "--json", help="Print one JSON object at the end.",
                       rich_help_panel=OUTPUT_PANEL)
TRUST_MODEL_CODE = typer.Option(False, "--trust-model-code",
                                help="Import the model.py / package.module:callable that a "
                                     "checkpoint, --plan or study names (only for code you trust).")
RUNGS = typer.Option(None, "--rungs", help="halving: epochs of the final recipe at each rung "
                     "(default 3,9); plans are ranked on the first, the last is the front's "
                     "training (map: its finalists'). Under --strategy auto it selects halving.",
                     rich_help_panel=STRATEGY_PANEL)


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


def parse_rungs(text: str | None) -> tuple[float, ...] | None:
    """`3,9` → (3.0, 9.0); None (not given) stays None; the settings check they rise."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CubesearchError(f"--rungs {text!r}: give epochs separated by commas, e.g. 1,3,9") from None


def given(**options: Any) -> dict[str, Any]:
    """The options set on the command line (unset ones are None): the rest keep their defaults."""
    return {k: v for k, v in options.items() if v is not None}
