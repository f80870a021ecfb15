"""Augmentations and crops on numpy arrays (planar C×H×W images, H×W masks).

Training samples are flipped, rotated by multiples of 90° (square tiles) and randomly cropped;
validation samples are never augmented. All randomness comes from a generator the dataset
derives from (seed, epoch, index), so a run is reproducible whatever the loader's order.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255  # mask value excluded from the loss and the metrics

# ImageNet statistics (what pretrained timm / smp encoders expect); other channel counts use 0.5.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalization(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel applied to images in [0, 1] before the model."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * channels, (0.25,) * channels


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """Random horizontal/vertical flip and, for square tiles, a random 90° rotation."""
    if rng.random() < 0.5:
        image, mask = image[:, :, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[::-1]
    if image.shape[1] == image.shape[2]:
        k = int(rng.integers(0, 4))
        if k:
            image, mask = np.rot90(image, k, axes=(1, 2)), np.rot90(mask, k)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def random_crop_origin(height: int, width: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


def grid_origins(length: int, size: int) -> list[int]:
    """Tile starts covering [0, length): a regular grid, the last tile flush with the border."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, size))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def grid_crops(height: int, width: int, size: int) -> list[tuple[int, int, int, int]]:
    """(y, x, overlap_y, overlap_x) of grid tiles covering an image exactly once: the last tile
    of a row or column is flush with the border and its first `overlap` rows/columns, already
    covered by the previous tile, are to be ignored (so every pixel is scored once)."""
    out = []
    ys, xs = grid_origins(height, size), grid_origins(width, size)
    for i, y in enumerate(ys):
        oy = max(0, ys[i - 1] + size - y) if i else 0
        for j, x in enumerate(xs):
            ox = max(0, xs[j - 1] + size - x) if j else 0
            out.append((y, x, oy, ox))
    return out
