"""What form a batch takes on the device: normalised float input (`Inputs`, `normalised`), autocast."""

from __future__ import annotations

from typing import Any

import torch

from cubesearch.training.data.transforms import normalization


def normalised(image: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """uint8 (scaled to [0, 1]) or float images → the normalised float input models see."""
    x = image.float().div(255) if image.dtype == torch.uint8 else image.float()
    mean, std = normalization(channels or x.shape[1])
    return (x - x.new_tensor(mean).view(1, -1, 1, 1)) / x.new_tensor(std).view(1, -1, 1, 1)


class Inputs:
    """Moves a batch to the device, scales uint8 to [0, 1] and normalises per channel."""

    def __init__(self, channels: int, device: torch.device, channels_last: bool,
                 normalize: bool = True) -> None:
        mean, std = normalization(channels) if normalize else ((0.0,) * channels, (1.0,) * channels)
        self.mean_list, self.std_list = list(mean), list(std)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.device, self.channels_last = device, channels_last

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        x = image.to(self.device, non_blocking=non_blocking)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = mask.to(self.device, non_blocking=non_blocking).long()
        if y.dim() == 4:
            y = y[:, 0]
        return x, y


def autocast(device: torch.device, amp: bool) -> Any:
    """bf16 (else fp16) autocast on CUDA when `amp`; a no-op context elsewhere."""
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)
