"""`cubesearch data preview|check`: look at a dataset before training on it."""

from __future__ import annotations

import os
import tempfile
from enum import Enum
from pathlib import Path

import typer
from rich.table import Table

from cubesearch.cli.app import app, out_console, print_json

data_app = typer.Typer(help="Datasets: preview tiles and masks, check a dataset folder.",
                       no_args_is_help=True, add_completion=False)
app.add_typer(data_app, name="data")


class Split(str, Enum):
    train = "train"
    val = "val"


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF",
                 ".tiff": "TIFF", ".webp": "WEBP"}


def _image_destination(out: str) -> Path:
    """-o must name an image file PIL can write, somewhere a file can be made."""
    from cubesearch.core.errors import CubesearchError

    path = Path(out)
    accepted = ", ".join(IMAGE_FORMATS)
    if path.is_dir():
        raise CubesearchError(f"-o {out} is a folder; give an image file name ending in {accepted} "
                              f"(e.g. {path / 'preview.png'})")
    if path.suffix.lower() not in IMAGE_FORMATS:
        raise CubesearchError(f"-o {out}: unknown image extension {path.suffix or '(none)'!r}; "
                              f"give a file name ending in {accepted}")
    where = path.absolute().parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise CubesearchError(f"-o {out}: {where} is a file, so the image cannot go there; give a "
                              "file name in a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        raise CubesearchError(f"-o {out}: cannot write in {where} (permission denied)")
    return path


@data_app.command("preview")
def preview(
    data: str = typer.Option("synthetic", help="synthetic, or a dataset folder."),
    out: str = typer.Option("preview.png", "--out", "-o", help="PNG file to write."),
    n: int = typer.Option(8, "-n", min=1, help="Number of tiles."),
    columns: int = typer.Option(4, min=1, help="Tiles per row."),
    size: int = typer.Option(256, help="Tile size."),
    seed: int = typer.Option(0),
    split: Split = typer.Option(Split.val, help="train (augmented) or val."),
    classes: int = typer.Option(1, "--classes", help="Classes of the masks (synthetic: up to 4)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Write a PNG grid of tiles, each above its mask (building white; with --classes 4 road
    grey and vegetation green)."""
    from PIL import Image  # imported on use, like torch: `cubesearch --help` stays fast

    from cubesearch.training.data import make_datasets
    from cubesearch.training.data.preview import preview_grid

    path = _image_destination(out)  # before any work
    train_ds, val_ds = make_datasets(data, size, train_tiles=n, val_tiles=n, seed=seed,
                                     num_classes=classes)
    ds = train_ds if split is Split.train else val_ds
    grid = preview_grid(ds, n, columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:  # written aside, then renamed: never a half-written image under the name
        Image.fromarray(grid).save(tmp, format=IMAGE_FORMATS[path.suffix.lower()])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    info = {"out": str(path), "tiles": min(n, len(ds)), "width": grid.shape[1], "height": grid.shape[0],
            "data": data, "split": split.value}
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
    from cubesearch.training.data.folder import check_folder

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
