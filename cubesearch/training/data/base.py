"""The sample format every cubesearch dataset shares, and the base class that gives it.

A sample is `(image, mask)`: `image` a uint8 (or float32 in [0, 1]) tensor C×H×W, `mask` a
uint8 tensor H×W of class indices (0 … K−1; 255 = ignore). The trainer moves both to the
device, scales and normalises the image there, and turns the mask into the loss target.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from cubesearch.training.data.transforms import augment


class SegmentationDataset(Dataset):
    """Base class: subclasses implement `__len__` and `load(index, rng)` → numpy (image C×H×W,
    mask H×W); this class applies training augmentations, reproducibly per epoch."""

    num_classes: int = 1  # model output channels: 1 = binary (sigmoid), K ≥ 2 = softmax
    in_channels: int = 3
    size: int = 256  # tile side
    name: str = "dataset"

    def __init__(self, *, train: bool, seed: int = 0) -> None:
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Training augmentations depend on (seed, epoch, index) only."""
        self.epoch = int(epoch)

    def sample_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index), 0xA4])

    def load(self, index: int, rng: np.random.Generator | None
             ) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        """Sample `index` as numpy (image C×H×W, mask H×W); `rng` is given for training
        samples (random crops), None for validation ones."""
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = self.sample_rng(index) if self.train else None
        image, mask = self.load(index, rng)
        if rng is not None:
            image, mask = augment(image, mask, rng)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(mask))

    def describe(self) -> str:
        return f"{self.name}: {len(self)} tiles of {self.in_channels}×{self.size}×{self.size}"
