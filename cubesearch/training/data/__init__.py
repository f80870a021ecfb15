"""Datasets: the embedded synthetic aerial buildings and real folders (generic, Inria, WHU).

`make_datasets(data, size=…)` returns `(train, val)` for `data="synthetic"` or a folder path;
every dataset yields `(image uint8 C×H×W, mask uint8 H×W)` samples (see `base`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cubesearch.core.errors import CubesearchError
from cubesearch.training.data.folder import folder_datasets
from cubesearch.training.data.synthetic import SyntheticBuildings

DEFAULT_TRAIN_TILES = 256
DEFAULT_VAL_TILES = 64

__all__ = ["DEFAULT_TRAIN_TILES", "DEFAULT_VAL_TILES", "make_datasets"]


def make_datasets(data: Any = "synthetic", size: int = 256, *, train_tiles: int | None = None,
                  val_tiles: int | None = None, seed: int = 0, num_classes: int = 1,
                  in_channels: int = 3, val_split: float | None = None,
                  crops_per_image: int | None = None, cache_dir: str | None = None,
                  workers: int | None = None) -> tuple[Any, Any]:
    """(train, val) datasets of `size`×`size` tiles.

    `data`: "synthetic" (the embedded default: `train_tiles` and `val_tiles` tiles, drawn from
    `seed`), a dataset folder (see `cubesearch.training.data.folder`), or an existing (train, val) pair,
    returned as it is. `num_classes` 1 = binary building masks (sigmoid); K ≥ 2 = softmax.
    `cache_dir` (default: the `CUBESEARCH_DATA_CACHE` environment variable, so the CLI and the
    search can use it too) keeps the synthetic tiles on disk: drawn once, read back later.
    """
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise CubesearchError("data as datasets must be a (train, val) pair")
        return data[0], data[1]
    if not isinstance(data, (str, Path)):
        raise CubesearchError(f"data must be 'synthetic', a folder or a (train, val) pair, not "
                              f"{type(data).__name__}")
    if int(size) < 16:
        raise CubesearchError(f"tile size {size} is too small (at least 16)")
    if int(num_classes) < 1:
        raise CubesearchError(f"number of classes must be at least 1, not {num_classes}")
    if str(data) == "synthetic":
        if cache_dir is None:
            cache_dir = os.environ.get("CUBESEARCH_DATA_CACHE") or None

        if in_channels != 3:
            raise CubesearchError(f"the synthetic tiles are RGB: the input must have 3 channels, "
                                  f"not {in_channels}")
        if val_split is not None:
            raise CubesearchError("--val-split applies to dataset folders; the synthetic set has "
                                  "its own validation tiles (--val-tiles)")
        n_train = DEFAULT_TRAIN_TILES if train_tiles is None else int(train_tiles)
        n_val = DEFAULT_VAL_TILES if val_tiles is None else int(val_tiles)
        train = SyntheticBuildings(n_train, size, seed, "train", classes=num_classes,
                                   cache_dir=cache_dir).materialize(workers)
        val = SyntheticBuildings(n_val, size, seed, "val", classes=num_classes,
                                 cache_dir=cache_dir).materialize(workers)
        return train, val
    return folder_datasets(data, size, seed=seed, num_classes=num_classes, in_channels=in_channels,
                           val_split=val_split, crops_per_image=crops_per_image)
