"""`cubesearch train MODEL`, and `cubesearch data preview|check` for the datasets."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cubesearch.cli.app import app, out_console, print_json

data_app = typer.Typer(help="Datasets: preview tiles and masks, check a dataset folder.",
                       no_args_is_help=True, add_completion=False)
app.add_typer(data_app, name="data")

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


@app.command()
def train(
    model: str = typer.Argument(..., help="Model spec (timm:NAME, smp:ARCH:ENCODER, model.py[:NAME], "
                                          "package.module:callable) or a checkpoint folder."),
    plan: str = typer.Option(None, "--plan", help="Plan JSON: convert the model with it before training."),
    data: str = typer.Option("synthetic",
                             help="synthetic, or a dataset folder (images/+masks/, Inria, WHU)."),
    epochs: float = typer.Option(None, help="Training epochs (default 5; fractions allowed)."),
    steps: int = typer.Option(None, help="Training steps (batches), instead of --epochs."),
    input_size: str = typer.Option("3x256x256", help="Training tiles, CxHxW (square)."),
    out: str = typer.Option("runs/train", "--out", "-o",
                            help="Checkpoint folder: model.safetensors, plan.json, metrics.json."),
    classes: int = typer.Option(None, "--classes",
                                help="1 = binary buildings (sigmoid, default); K ≥ 2 = softmax "
                                     "over K classes."),
    loss: str = typer.Option("bce", help="bce, dice or bce+dice (bce = cross-entropy when K ≥ 2)."),
    lr: float = typer.Option(None, help="Peak learning rate (default 2e-3)."),
    batch_size: int = typer.Option(None, help="Batch size (default 8)."),
    seed: int = typer.Option(0, help="Seed of the model init, data order, augmentations, synthetic tiles."),
    optimizer: str = typer.Option("adam", help="adam (the paper's), adamw or sgd."),
    weight_decay: float = typer.Option(0.0, help="Weight decay (AdamW uses 0.01 when 0)."),
    warmup: float = typer.Option(0.05, help="Linear warmup: a fraction of the steps (< 1) or a count."),
    init: str = typer.Option(None, "--init",
                             help="Warm start from a checkpoint folder or weights file (tensors whose "
                                  "names and shapes match)."),
    distill_steps: int = typer.Option(0, help="First fit each Cube block to the conv it replaces on N "
                                              "batches (local distillation; needs --init)."),
    new_lr: float = typer.Option(None, help="With --init: peak learning rate of the parameters it "
                                 "did not load (the new blocks); the loaded ones use --lr."),
    val_split: float = typer.Option(None, help="Fraction held out for validation (folders without val/)."),
    train_tiles: int = typer.Option(None, help="Synthetic training tiles (default 256)."),
    val_tiles: int = typer.Option(None, help="Synthetic validation tiles (default 64)."),
    crops_per_image: int = typer.Option(None, help="Random training crops per image and epoch "
                                                   "(default: as many tiles as the image holds)."),
    eval_every: int = typer.Option(None, help="Evaluate every N steps (default: each epoch and the end)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, …"),
    amp: bool = typer.Option(None, "--amp/--no-amp", help="Mixed precision (default: on with CUDA)."),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last",
                                       help="channels_last memory format (faster convs on CPU and GPU)."),
    pretrained: bool = typer.Option(False, "--pretrained", help="ImageNet weights for timm/smp encoders."),
    workers: int = typer.Option(0, help="Data-loader worker processes."),
    trust_model_code: bool = typer.Option(False, "--trust-model-code",
                                          help="Import a model.py / package.module:callable that a "
                                               "checkpoint or --plan names (only for code you trust)."),
    no_verify: bool = typer.Option(False, "--no-verify",
                                   help="Load a checkpoint folder without its manifest check "
                                        "(hand-made folders)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the final metrics."),
) -> None:
    """Train MODEL on the synthetic buildings or a dataset folder; report OA, precision, recall, F1, IoU.

    Metrics are computed over the whole validation set; the checkpoint (safetensors + plan +
    metrics) loads with `cubesearch.load`."""
    from cubesearch.checkpoint import verification
    from cubesearch.sites import parse_input_size
    from cubesearch.training import DEFAULT_BATCH, DEFAULT_LR
    from cubesearch.training import train as run_training
    from cubesearch.trust import trust_model_code as trust_model_code_for

    console = out_console(as_json)
    size = parse_input_size(input_size)
    with trust_model_code_for(trust_model_code, specs=[model]), verification(not no_verify):
        result = run_training(
            model, plan=plan, data=data, epochs=epochs, steps=steps, input_size=size, out=out or None,
            seed=seed, lr=DEFAULT_LR if lr is None else lr,
            batch_size=DEFAULT_BATCH if batch_size is None else batch_size,
            init_from=init, num_classes=classes, loss=loss, optimizer=optimizer, weight_decay=weight_decay,
            warmup=warmup, distill_steps=distill_steps, new_lr=new_lr, train_tiles=train_tiles,
            val_tiles=val_tiles,
            val_split=val_split, crops_per_image=crops_per_image, eval_every=eval_every, device=device,
            amp=amp, channels_last=channels_last, pretrained=pretrained, workers=workers,
            console=console, log=console.print, progress=True)
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


# --- data -------------------------------------------------------------------------------------

_COLOURS = ((0, 0, 0), (255, 255, 255), (110, 110, 110), (40, 150, 40))


def colour_mask(mask, num_classes: int):
    """(H, W) classes → (H, W, 3) uint8: background black, building white, road grey,
    vegetation green (other classes hashed), ignore red."""
    import numpy as np

    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    for c in range(max(2, num_classes)):
        colour = _COLOURS[c] if c < len(_COLOURS) else ((c * 97) % 256, (c * 57) % 256, (c * 31) % 256)
        out[mask == c] = colour
    out[mask == 255] = (220, 40, 40)
    return out


def preview_grid(dataset, n: int, columns: int, pad: int = 4):
    """An RGB uint8 grid: each sample's image above its colour-coded mask."""
    import numpy as np

    n = min(n, len(dataset))
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    cells = []
    for i in range(n):
        image, mask = dataset[i]
        img = image.numpy()
        if img.dtype != np.uint8:
            img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        img = img[:3].transpose(1, 2, 0) if img.shape[0] >= 3 else np.repeat(img[:1], 3, 0).transpose(1, 2, 0)
        cells.append(np.concatenate([img, np.full((pad, img.shape[1], 3), 255, np.uint8),
                                     colour_mask(mask.numpy(), getattr(dataset, "num_classes", 1))], 0))
    h, w = cells[0].shape[:2]
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + cell.shape[0], x:x + cell.shape[1]] = cell
    return grid


@data_app.command("preview")
def preview(
    data: str = typer.Option("synthetic", help="synthetic, or a dataset folder."),
    out: str = typer.Option("preview.png", "--out", "-o", help="PNG file to write."),
    n: int = typer.Option(8, "-n", help="Number of tiles."),
    columns: int = typer.Option(4, help="Tiles per row."),
    size: int = typer.Option(256, help="Tile size."),
    seed: int = typer.Option(0),
    split: str = typer.Option("val", help="train (augmented) or val."),
    classes: int = typer.Option(1, "--classes", help="Classes of the masks (synthetic: up to 4)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Write a PNG grid of tiles, each above its mask (building white; with --classes 4 road
    grey and vegetation green)."""
    from PIL import Image

    from cubesearch.data import make_datasets
    from cubesearch.errors import CubesearchError

    if split not in ("train", "val"):
        raise CubesearchError(f"--split must be train or val, not {split!r}")
    if n < 1:
        raise CubesearchError(f"-n must be at least 1, not {n}")
    train_ds, val_ds = make_datasets(data, size, train_tiles=n, val_tiles=n, seed=seed,
                                     num_classes=classes)
    ds = train_ds if split == "train" else val_ds
    grid = preview_grid(ds, n, columns)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    info = {"out": str(path), "tiles": min(n, len(ds)), "width": grid.shape[1], "height": grid.shape[0],
            "data": data, "split": split}
    if as_json:
        print_json(info)
    else:
        out_console(False).print(f"wrote {path}: {info['tiles']} tiles of {size}×{size} with masks "
                                 f"({grid.shape[1]}×{grid.shape[0]} px)")


@data_app.command("check")
def check(
    folder: str = typer.Argument(..., help="Dataset folder (images/+masks/, Inria, WHU)."),
    classes: int = typer.Option(1, "--classes", help="Classes of the masks."),
    channels: int = typer.Option(3, help="Image channels the model takes."),
    val_split: float = typer.Option(None, help="Fraction held out (folders without val/)."),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Read and check every image and mask of a dataset folder (sizes, mask values, channels)."""
    from cubesearch.data.folder import check_folder

    stats = check_folder(folder, num_classes=classes, in_channels=channels, val_split=val_split, seed=seed)
    if as_json:
        print_json(stats)
        return
    table = Table(title=f"{folder}: OK")
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("layout", stats["layout"])
    table.add_row("training images", str(stats["train_images"]))
    table.add_row("validation images", str(stats["val_images"]))
    table.add_row("pixels", f"{stats['pixels']:,}")
    table.add_row("building pixels", f"{stats['building_fraction']:.2%}")
    out_console(False).print(table)
