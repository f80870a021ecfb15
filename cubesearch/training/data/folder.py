"""Real datasets from a folder: generic images/ + masks/, Inria Aerial Image Labeling, WHU.

Layouts (`detect_layout`), tried in this order:

- **Inria** (`train/images/*.tif` + `train/gt/*.tif`, 5000×5000 tiles): without `--val-split`
  the standard validation split is used, the first five tiles of every city (`austin1` …
  `austin5`, …), when the names follow it; otherwise a seeded random fraction.
- **WHU building** (`train/image` + `train/label`, with `val/image` + `val/label` if present).
- **generic**: `images/` + `masks/`, or `train/images` + `train/masks` (and `val/images` +
  `val/masks`). Without a `val/` folder a seeded fraction (`val_split`, default 0.2) of the
  images is held out.

Images and masks pair by file stem (png, jpg, tif, bmp). Every problem is a `CubesearchError`
that names the file: a missing or orphan mask, an unreadable file, image/mask size mismatch, a
mask whose values are not {0, 1} or {0, 255} (or class indices < K for K > 2 classes, 255 =
ignore), too few channels, an empty folder, a tile larger than the image. Nothing is skipped
silently.

Images larger than the tile are cut: random crops for training (`crops_per_image` per epoch,
by default as many as the image holds tiles), a grid covering every pixel exactly once for
validation (the overlap of the last row/column is ignored). Decoded files are kept in a
shared in-memory cache (`CUBESEARCH_CACHE_MB`, default 2048); a dataset that fits is read
and checked completely before training starts. Large uncompressed TIFFs are memory-mapped.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cubesearch.core.errors import CubesearchError
from cubesearch.training.data.base import SegmentationDataset
from cubesearch.training.data.transforms import IGNORE_INDEX, grid_crops, random_crop_origin

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TIFF_EXTS = (".tif", ".tiff")
INRIA_VAL_IDS = range(1, 6)  # the standard validation tiles: <city>1 … <city>5


@dataclass
class Pair:
    """An image and its mask, with the size read from the image's header."""

    image: Path
    mask: Path
    height: int = 0
    width: int = 0
    channels: int = 0


@dataclass
class Layout:
    name: str  # "inria", "whu", "generic"
    root: Path
    train: list[Pair]
    val: list[Pair] | None  # None: no validation folder, split `train`
    split_rule: str = "fraction"  # or "inria" (first five tiles per city)


# --- discovery --------------------------------------------------------------------------------


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                  and not p.name.startswith("."))


def pair_folder(images: Path, masks: Path) -> list[Pair]:
    """Match images to masks by file stem; any image without a mask (or the reverse), or two
    files with one stem, is an error naming it."""
    if not images.is_dir():
        raise CubesearchError(f"{images} is not a folder")
    if not masks.is_dir():
        raise CubesearchError(f"{masks} is missing: every image folder needs its mask folder")
    imgs, msks = _files(images), _files(masks)
    if not imgs:
        raise CubesearchError(f"{images} has no images ({', '.join(IMAGE_EXTS)})")
    by_stem: dict[str, Path] = {}
    for m in msks:
        if m.stem in by_stem:
            raise CubesearchError(f"two masks for one image: {by_stem[m.stem]} and {m}")
        by_stem[m.stem] = m
    pairs, seen = [], set()
    for im in imgs:
        if im.stem in seen:
            raise CubesearchError(f"two images with the stem {im.stem!r} in {images}")
        seen.add(im.stem)
        mask = by_stem.get(im.stem)
        if mask is None:
            raise CubesearchError(f"image {im} has no mask in {masks} (expected {im.stem}.png/.tif/…)")
        pairs.append(Pair(im, mask))
    orphans = sorted(set(by_stem) - seen)
    if orphans:
        raise CubesearchError(f"mask {by_stem[orphans[0]]} has no image in {images}"
                              + (f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""))
    return pairs


def detect_layout(root: str | Path) -> Layout:
    """Which of the supported layouts `root` holds, with its image/mask pairs."""
    root = Path(root).expanduser()
    if not root.exists():
        raise CubesearchError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise CubesearchError(f"dataset {root} is not a folder (pass --data synthetic or a folder)")
    for base in (root, root / "AerialImageDataset"):  # Inria unpacks to AerialImageDataset/
        if (base / "train" / "images").is_dir() and (base / "train" / "gt").is_dir():
            train = pair_folder(base / "train" / "images", base / "train" / "gt")
            return Layout("inria", base, train, None, split_rule="inria")
    if (root / "train" / "image").is_dir() and (root / "train" / "label").is_dir():
        train = pair_folder(root / "train" / "image", root / "train" / "label")
        val = (pair_folder(root / "val" / "image", root / "val" / "label")
               if (root / "val" / "image").is_dir() else None)
        return Layout("whu", root, train, val)
    if (root / "train" / "images").is_dir():
        train = pair_folder(root / "train" / "images", root / "train" / "masks")
        val = (pair_folder(root / "val" / "images", root / "val" / "masks")
               if (root / "val" / "images").is_dir() else None)
        return Layout("generic", root, train, val)
    if (root / "images").is_dir():
        return Layout("generic", root, pair_folder(root / "images", root / "masks"), None)
    raise CubesearchError(
        f"no dataset found in {root}: expected images/ + masks/ (or train/ and val/ with "
        "them), train/images + train/gt (Inria) or train/image + train/label (WHU)")


def split_pairs(layout: Layout, val_split: float | None, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, val) pairs: the layout's val folder, Inria's standard split, or a seeded fraction."""
    if layout.val is not None:
        if val_split is not None:
            raise CubesearchError(f"{layout.root} has a validation folder; --val-split applies "
                                  "only to datasets without one")
        return layout.train, layout.val
    pairs = layout.train
    if val_split is None and layout.split_rule == "inria":
        ids = [re.fullmatch(r"([A-Za-z_-]+?)(\d+)", p.image.stem) for p in pairs]
        if all(ids):
            val = [p for p, m in zip(pairs, ids, strict=True) if int(m.group(2)) in INRIA_VAL_IDS]
            train = [p for p, m in zip(pairs, ids, strict=True) if int(m.group(2)) not in INRIA_VAL_IDS]
            if val and train:
                return train, val
    fraction = 0.2 if val_split is None else float(val_split)
    if not 0 < fraction < 1:
        raise CubesearchError(f"--val-split {val_split} must be between 0 and 1")
    if len(pairs) < 2:
        raise CubesearchError(f"{layout.root} has {len(pairs)} image; at least 2 are needed to "
                              "hold some out for validation (or add a val/ folder)")
    n_val = min(max(1, round(fraction * len(pairs))), len(pairs) - 1)
    order = np.random.default_rng([int(seed), 0x5E1]).permutation(len(pairs))
    val_idx = set(order[:n_val].tolist())
    return ([p for i, p in enumerate(pairs) if i not in val_idx],
            [p for i, p in enumerate(pairs) if i in val_idx])


# --- reading ----------------------------------------------------------------------------------


def read_header(path: Path) -> tuple[int, int, int]:
    """(height, width, channels) without decoding the pixels."""
    try:
        if path.suffix.lower() in TIFF_EXTS:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, axes = series.shape, series.axes
            dims = dict(zip(axes, shape, strict=True))
            h, w = dims.get("Y"), dims.get("X")
            c = dims.get("S", dims.get("C", 1))
            if h is None or w is None:
                raise ValueError(f"axes {axes} have no Y/X")
            return int(h), int(w), int(c)
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            c = len(im.getbands()) if im.mode != "P" else 1
        return int(h), int(w), int(c)
    except CubesearchError:
        raise
    except Exception as exc:
        raise CubesearchError(f"cannot read {path}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_array(path: Path) -> np.ndarray:
    """Pixels as (C, H, W) for images with channels, (H, W) for single-band files. Uncompressed
    TIFFs are memory-mapped (crops then read only their bytes)."""
    try:
        if path.suffix.lower() in TIFF_EXTS:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                axes = tif.series[0].axes
            try:
                arr = tifffile.memmap(path, mode="r")
            except Exception:  # compressed / tiled: decode it all
                arr = tifffile.imread(path)
            arr = np.asarray(arr) if not isinstance(arr, np.memmap) else arr
            axes = axes.replace("C", "S")
            if arr.ndim == 3 and axes.endswith("S"):  # YXS → SYX
                arr = arr.transpose(2, 0, 1)
            elif arr.ndim > 3:
                arr = arr.reshape((-1, *arr.shape[-2:])) if axes.endswith("YX") else arr
            return arr
        from PIL import Image

        with Image.open(path) as im:
            if im.mode in ("P", "1"):
                arr = np.asarray(im.convert("L") if im.mode == "1" else im)
            elif im.mode in ("I;16", "I;16B", "I;16L"):
                arr = np.asarray(im).astype(np.uint16)
            elif im.mode in ("RGB", "RGBA", "L", "LA", "I", "F"):
                arr = np.asarray(im)
            else:
                arr = np.asarray(im.convert("RGB"))
        return arr.transpose(2, 0, 1) if arr.ndim == 3 else arr
    except CubesearchError:
        raise
    except Exception as exc:
        raise CubesearchError(f"cannot read {path}: {_reason(exc)}") from None


def to_image(arr: np.ndarray, path: Path, channels: int) -> np.ndarray:
    """(C, H, W) uint8, or float32 in [0, 1] for 16-bit and float sources, first `channels`."""
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape[0] < channels:
        raise CubesearchError(f"image {path} has {arr.shape[0]} channel(s); the model takes "
                              f"{channels} (--input-size {channels}x…)")
    arr = arr[:channels]
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return (arr.astype(np.float32) / 65535.0).astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    raise CubesearchError(f"image {path} has pixel type {arr.dtype}; expected 8- or 16-bit "
                          "integers or floats in [0, 1]")


def mask_values(mask: np.ndarray) -> list[int]:
    m = np.asarray(mask)
    if m.dtype == np.uint8:
        counts = np.bincount(m.ravel(), minlength=256)
        return np.flatnonzero(counts).tolist()
    return [v.item() for v in np.unique(m)]


def to_mask(arr: np.ndarray, path: Path, num_classes: int) -> np.ndarray:
    """(H, W) uint8 class indices. Binary tasks (K ≤ 2) accept {0, 1} or {0, 255}; K > 2
    accepts 0 … K−1 and 255 (ignored). Anything else names the file and the values found."""
    if arr.ndim == 3:
        if arr.shape[0] == 1 or all(np.array_equal(arr[0], arr[c]) for c in range(1, arr.shape[0])
                                    if c < 3):
            arr = arr[0]
        else:
            raise CubesearchError(f"mask {path} has {arr.shape[0]} different channels; masks must "
                                  "be single-band images of class values")
    values = mask_values(arr)
    if num_classes <= 2:
        if set(values) <= {0, 1} or set(values) <= {0, 255}:
            return (np.asarray(arr) > 0).astype(np.uint8)
        raise CubesearchError(f"mask {path} has values {_show(values)}; binary masks must be "
                              "{0, 1} or {0, 255}")
    bad = [v for v in values if not (0 <= v < num_classes or v == IGNORE_INDEX)]
    if bad:
        raise CubesearchError(f"mask {path} has values {_show(values)}; with {num_classes} classes "
                              f"they must be 0…{num_classes - 1} (or {IGNORE_INDEX} = ignore)")
    return np.asarray(arr).astype(np.uint8)


def _show(values: list) -> str:
    shown = ", ".join(str(v) for v in values[:8])
    return "{" + shown + (f", … ({len(values)} values)" if len(values) > 8 else "") + "}"


class _FileCache:
    """Decoded (image, mask) per pair, least recently used out first, shared by datasets."""

    def __init__(self) -> None:
        self.items: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.bytes = 0

    @staticmethod
    def budget() -> int:
        return int(float(os.environ.get("CUBESEARCH_CACHE_MB", "2048")) * 2**20)

    def get(self, key):
        item = self.items.get(key)
        if item is not None:
            self.items.move_to_end(key)
        return item

    def put(self, key, item) -> None:
        size = sum(a.nbytes for a in item if not isinstance(a, np.memmap))
        self.items[key] = item
        self.bytes += size
        while self.bytes > self.budget() and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.bytes -= sum(a.nbytes for a in old if not isinstance(a, np.memmap))


_CACHE = _FileCache()


def load_pair(pair: Pair, num_classes: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Decoded and checked (image C×H×W, mask H×W) of a pair, cached."""
    key = (str(pair.image), str(pair.mask), num_classes, channels)
    item = _CACHE.get(key)
    if item is None:
        raw = read_array(pair.image)
        image = to_image(raw, pair.image, channels)
        mask = to_mask(read_array(pair.mask), pair.mask, num_classes)
        if image.shape[1:] != mask.shape:
            raise CubesearchError(f"image {pair.image} is {image.shape[2]}×{image.shape[1]} but its "
                                  f"mask {pair.mask} is {mask.shape[1]}×{mask.shape[0]}")
        item = (image, mask)
        _CACHE.put(key, item)
    return item


# --- the dataset ------------------------------------------------------------------------------


class FolderDataset(SegmentationDataset):
    """Tiles of `size`×`size` cut from image/mask pairs: random crops (training) or a grid
    that scores every pixel once (validation)."""

    def __init__(self, pairs: list[Pair], size: int, *, train: bool, seed: int = 0,
                 num_classes: int = 1, in_channels: int = 3, crops_per_image: int | None = None,
                 name: str = "folder", preload: bool | None = None) -> None:
        super().__init__(train=train, seed=seed)
        if not pairs:
            raise CubesearchError(f"{name}: no images in the {'training' if train else 'validation'} set")
        self.pairs, self.size, self.name = pairs, int(size), name
        self.num_classes, self.in_channels = int(num_classes), int(in_channels)
        self.index: list[tuple[int, int, int, int, int]] = []  # (pair, y, x, skip_y, skip_x)
        total = 0
        for i, p in enumerate(pairs):
            if not p.height:
                p.height, p.width, p.channels = read_header(p.image)
                mh, mw, _ = read_header(p.mask)
                if (mh, mw) != (p.height, p.width):
                    raise CubesearchError(f"image {p.image} is {p.width}×{p.height} but its mask "
                                          f"{p.mask} is {mw}×{mh}")
            if p.channels < self.in_channels:
                raise CubesearchError(f"image {p.image} has {p.channels} channel(s); the model "
                                      f"takes {self.in_channels} (--input-size {self.in_channels}x…)")
            if p.height < self.size or p.width < self.size:
                raise CubesearchError(f"image {p.image} is {p.width}×{p.height}, smaller than the "
                                      f"{self.size}×{self.size} tiles (choose a smaller --input-size)")
            total += p.height * p.width * (self.in_channels + 1)
            if train:
                n = crops_per_image or max(1, (p.height // self.size) * (p.width // self.size))
                self.index += [(i, -1, -1, 0, 0)] * int(n)
            else:
                self.index += [(i, y, x, oy, ox) for y, x, oy, ox in
                               grid_crops(p.height, p.width, self.size)]
        if preload is None:
            preload = total <= _FileCache.budget() // 2
        if preload:  # read and check every file now, not in the middle of training
            for p in pairs:
                load_pair(p, self.num_classes, self.in_channels)

    def __len__(self) -> int:
        return len(self.index)

    def load(self, index: int, rng=None) -> tuple[np.ndarray, np.ndarray]:
        i, y, x, oy, ox = self.index[index]
        pair = self.pairs[i]
        image, mask = load_pair(pair, self.num_classes, self.in_channels)
        s = self.size
        if y < 0:  # training: a random crop
            y, x = random_crop_origin(pair.height, pair.width, s, rng or np.random.default_rng(index))
        img = np.asarray(image[:, y:y + s, x:x + s])
        msk = np.array(mask[y:y + s, x:x + s])
        if oy or ox:  # already scored by the previous grid tile
            msk[:oy] = IGNORE_INDEX
            msk[:, :ox] = IGNORE_INDEX
        return img, msk

    def describe(self) -> str:
        kind = "random crops" if self.train else "grid tiles"
        return (f"{self.name}: {len(self.pairs)} images → {len(self)} {kind} of "
                f"{self.in_channels}×{self.size}×{self.size}")


def folder_datasets(root: str | Path, size: int, *, seed: int = 0, num_classes: int = 1,
                    in_channels: int = 3, val_split: float | None = None,
                    crops_per_image: int | None = None) -> tuple[FolderDataset, FolderDataset]:
    """(train, val) datasets from a folder in any supported layout."""
    layout = detect_layout(root)
    train, val = split_pairs(layout, val_split, seed)
    name = f"{layout.name} {layout.root}"
    return (FolderDataset(train, size, train=True, seed=seed, num_classes=num_classes,
                          in_channels=in_channels, crops_per_image=crops_per_image,
                          name=f"{name} (train)"),
            FolderDataset(val, size, train=False, seed=seed, num_classes=num_classes,
                          in_channels=in_channels, name=f"{name} (val)"))


def check_folder(root: str | Path, *, num_classes: int = 1, in_channels: int = 3,
                 val_split: float | None = None, seed: int = 0) -> dict:
    """Read and check every file of a dataset folder; a summary dict, or the first error."""
    layout = detect_layout(root)
    train, val = split_pairs(layout, val_split, seed)
    stats = {"layout": layout.name, "root": str(layout.root), "train_images": len(train),
             "val_images": len(val), "pixels": 0, "building_fraction": None}
    positive = 0
    total = 0
    for p in [*train, *val]:
        h, w, c = read_header(p.image)
        if c < in_channels:
            raise CubesearchError(f"image {p.image} has {c} channel(s); the model takes {in_channels}")
        image = to_image(read_array(p.image), p.image, in_channels)
        mask = to_mask(read_array(p.mask), p.mask, num_classes)
        if image.shape[1:] != mask.shape:
            raise CubesearchError(f"image {p.image} is {image.shape[2]}×{image.shape[1]} but its "
                                  f"mask {p.mask} is {mask.shape[1]}×{mask.shape[0]}")
        total += mask.size
        positive += int(np.count_nonzero(mask == 1))
    stats["pixels"] = total
    stats["building_fraction"] = positive / total if total else 0.0
    return stats
