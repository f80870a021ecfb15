"""Pictures of a dataset: colour-coded masks and a grid of tiles above their masks
(`cubesearch data preview`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cubesearch.training.data.transforms import IGNORE_INDEX

# background black, building white, road grey, vegetation green; other classes hashed
COLOURS = ((0, 0, 0), (255, 255, 255), (110, 110, 110), (40, 150, 40))
IGNORE_COLOUR = (220, 40, 40)


def colour_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) classes → (H, W, 3) uint8: background black, building white, road grey,
    vegetation green (other classes hashed), ignore red."""
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    for c in range(max(2, num_classes)):
        colour = COLOURS[c] if c < len(COLOURS) else ((c * 97) % 256, (c * 57) % 256, (c * 31) % 256)
        out[mask == c] = colour
    out[mask == IGNORE_INDEX] = IGNORE_COLOUR
    return out


def _cell(dataset: Any, i: int, pad: int) -> np.ndarray:
    image, mask = dataset[i]
    img = image.numpy()
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    img = img[:3].transpose(1, 2, 0) if img.shape[0] >= 3 else np.repeat(img[:1], 3, 0).transpose(1, 2, 0)
    return np.concatenate([img, np.full((pad, img.shape[1], 3), 255, np.uint8),
                           colour_mask(mask.numpy(), getattr(dataset, "num_classes", 1))], 0)


def preview_grid(dataset: Any, n: int, columns: int, pad: int = 4) -> np.ndarray:
    """An RGB uint8 grid: each of the first `n` samples' image above its colour-coded mask."""
    n = min(n, len(dataset))
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    cells = [_cell(dataset, i, pad) for i in range(n)]
    h, w = cells[0].shape[:2]
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + cell.shape[0], x:x + cell.shape[1]] = cell
    return grid
