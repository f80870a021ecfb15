"""`cubesearch train MODEL`: the options become a `TrainConfig`, the metrics a table."""

from __future__ import annotations

import typer
from rich.table import Table

from cubesearch.cli import options as o
from cubesearch.cli.app import app, out_console, print_json

METRIC_ROWS = (("oa", "OA"), ("precision", "Precision"), ("recall", "Recall"), ("f1", "F1"),
               ("iou", "IoU"), ("miou", "mIoU"), ("loss", "Loss"))


def metrics_table(metrics: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in METRIC_ROWS:
        if key in metrics and metrics[key] is not None:
            table.add_row(label, f"{metrics[key]:.4f}")
    for i, v in enumerate(metrics.get("iou_per_class") or []):
        table.add_row(f"IoU class {i}", f"{v:.4f}")
    return table


# The command's options (those other commands share are in cubesearch.cli.options)
MODEL = typer.Argument(..., help="Model spec (timm:NAME, smp:ARCH:ENCODER, model.py[:NAME], "
                                 "package.module:callable) or a checkpoint folder.")
PLAN = typer.Option(None, "--plan", help="Plan JSON: convert the model with it before training.",
                    rich_help_panel=o.MODEL_PANEL)
DATA = typer.Option("synthetic",
                    help="synthetic, or a dataset folder (images/+masks/, Inria, WHU).",
                    rich_help_panel=o.DATA_PANEL)
EPOCHS = typer.Option(None, help="Training epochs (default 5; fractions allowed).",
                      rich_help_panel=o.TRAINING_PANEL)
STEPS = typer.Option(None, help="Training steps (batches), instead of --epochs.",
                     rich_help_panel=o.TRAINING_PANEL)
INPUT_SIZE = typer.Option("3x256x256", help="Training tiles, CxHxW (square).",
                          rich_help_panel=o.DATA_PANEL)
OUT = typer.Option("runs/train", "--out", "-o",
                   help="Checkpoint folder: model.safetensors, plan.json, metrics.json.",
                   rich_help_panel=o.OUTPUT_PANEL)
NUM_CLASSES = typer.Option(None, "--classes",
                       help="1 = binary buildings (sigmoid, default); K ≥ 2 = softmax "
                            "over K classes.", rich_help_panel=o.MODEL_PANEL)
LOSS = typer.Option("bce", help="bce, dice or bce+dice (bce = cross-entropy when K ≥ 2).",
                    rich_help_panel=o.TRAINING_PANEL)
LR = typer.Option(None, help="Peak learning rate (default 2e-3).",
                  rich_help_panel=o.TRAINING_PANEL)
BATCH_SIZE = typer.Option(None, help="Batch size (default 8).", rich_help_panel=o.TRAINING_PANEL)
SEED = typer.Option(0, help="Seed of the model init, data order, augmentations, synthetic tiles.",
                    rich_help_panel=o.DATA_PANEL)
OPTIMIZER = typer.Option("adam", help="adam (the paper's), adamw or sgd.",
                         rich_help_panel=o.TRAINING_PANEL)
WEIGHT_DECAY = typer.Option(0.0, help="Weight decay (AdamW uses 0.01 when 0).",
                            rich_help_panel=o.TRAINING_PANEL)
WARMUP = typer.Option(0.05, help="Linear warmup: a fraction of the steps (< 1) or a count.",
                      rich_help_panel=o.TRAINING_PANEL)
SCHEDULER = typer.Option("cosine", help="Decay after the warmup: cosine, linear or constant.",
                         rich_help_panel=o.TRAINING_PANEL)
INIT = typer.Option(None, "--init",
                    help="Warm start from a checkpoint folder or weights file (tensors whose "
                         "names and shapes match).", rich_help_panel=o.MODEL_PANEL)
DISTILL_STEPS = typer.Option(0, help="First fit each Cube block to the conv it replaces on N "
                                     "batches (local distillation; needs --init).",
                             rich_help_panel=o.TRAINING_PANEL)
NEW_LR = typer.Option(None, help="With --init: peak learning rate of the parameters it "
                      "did not load (the new blocks); the loaded ones use --lr.",
                      rich_help_panel=o.TRAINING_PANEL)
TRAIN_TILES = typer.Option(None, help="Synthetic training tiles (default 256).",
                           rich_help_panel=o.DATA_PANEL)
VAL_TILES = typer.Option(None, help="Synthetic validation tiles (default 64).",
                         rich_help_panel=o.DATA_PANEL)
EVAL_EVERY = typer.Option(None, help="Evaluate every N steps (default: each epoch and the end).",
                          rich_help_panel=o.TRAINING_PANEL)
AMP = typer.Option(None, "--amp/--no-amp", help="Mixed precision (default: on with CUDA).",
                   rich_help_panel=o.TRAINING_PANEL)
CHANNELS_LAST = typer.Option(True, "--channels-last/--no-channels-last",
                             help="channels_last memory format (faster convs on CPU and GPU).",
                             rich_help_panel=o.TRAINING_PANEL)
PRETRAINED = typer.Option(False, "--pretrained", help="ImageNet weights for timm/smp encoders.",
                          rich_help_panel=o.MODEL_PANEL)
NO_VERIFY = typer.Option(False, "--no-verify",
                         help="Load a checkpoint folder without its manifest check "
                              "(hand-made folders).", rich_help_panel=o.OUTPUT_PANEL)
AS_JSON = typer.Option(False, "--json", help="Print one JSON object with the final metrics.",
                       rich_help_panel=o.OUTPUT_PANEL)


@app.command()
def train(
    model: str = MODEL,
    plan: str = PLAN, data: str = DATA, epochs: float = EPOCHS, steps: int = STEPS,
    input_size: str = INPUT_SIZE, out: str = OUT, num_classes: int = NUM_CLASSES, loss: str = LOSS,
    lr: float = LR, batch_size: int = BATCH_SIZE, seed: int = SEED, optimizer: str = OPTIMIZER,
    weight_decay: float = WEIGHT_DECAY, warmup: float = WARMUP, scheduler: str = SCHEDULER,
    init: str = INIT, distill_steps: int = DISTILL_STEPS, new_lr: float = NEW_LR,
    val_split: float = o.VAL_SPLIT, train_tiles: int = TRAIN_TILES, val_tiles: int = VAL_TILES,
    crops_per_image: int = o.CROPS_PER_IMAGE, eval_every: int = EVAL_EVERY, device: str = o.DEVICE,
    amp: bool = AMP, channels_last: bool = CHANNELS_LAST, pretrained: bool = PRETRAINED,
    workers: int = o.WORKERS, trust_model_code: bool = o.TRUST_MODEL_CODE, no_verify: bool = NO_VERIFY,
    as_json: bool = AS_JSON,
) -> None:
    """Train MODEL on the synthetic buildings or a dataset folder; report OA, precision, recall, F1, IoU.

    Metrics are computed over the whole validation set; the checkpoint (safetensors + plan +
    metrics) loads with `cubesearch.load`."""
    from cubesearch.models.trust import trust_model_code as trust_model_code_for
    from cubesearch.plan.checkpoint import verification
    from cubesearch.plan.sites import parse_input_size
    from cubesearch.training import TrainConfig
    from cubesearch.training import train as run_training

    # every option named like a TrainConfig field is one; unset (None) ones keep its defaults
    given = {k: v for k, v in locals().items() if k in TrainConfig.model_fields and v is not None}
    config = TrainConfig.build(**{**given, "input_size": parse_input_size(input_size)})
    console = out_console(as_json)
    with trust_model_code_for(trust_model_code, specs=[model]), verification(not no_verify):
        result = run_training(model, config=config, plan=plan, data=data, init_from=init,
                              out=out or None, console=console, log=console.print)
    m = result.metrics
    if as_json:
        print_json({"model": model, "plan": plan, "data": data,
                    "checkpoint": str(result.out_dir) if result.out_dir else None,
                    "metrics": m, "history": result.history})
        return
    console.print(metrics_table(m, f"validation ({m['val_tiles']} tiles)"))
    console.print(
        f"{m['steps']} steps ({m['epochs']:g} epochs) of batch {m['batch_size']} in "
        f"{m['seconds']:.1f} s ({m['images_per_second'] or 0:.1f} images/s training, {m['device']})"
        + (f"; checkpoint: {result.out_dir}" if result.out_dir else ""))
