"""The classic U-Net (Ronneberger, Fischer & Brox, 2015) as a cubesearch user model file.

    cubesearch sites examples/unet.py
    cubesearch convert examples/unet.py -o runs/unet-cube

The paper's version: a contracting path of four double-conv stages (3×3 conv → BN → ReLU, twice)
with 2×2 max pooling, a bottleneck, and an expanding path that upsamples (2×2 transposed conv,
halving the channels), concatenates the skip connection and runs a double conv; a 1×1 conv makes
the class logits. Two modernisations, as in most implementations today: padding 1, so the output
is the input's size (the paper used unpadded convs and cropped the skips), and BatchNorm after
each conv. Base width 64 (64, 128, 256, 512, 1024) as in the paper; `width` scales it.

Every 3×3 conv is eligible for a Cube block: 10 in the encoder (`encoder.*`, `bottleneck.*`),
8 in the decoder (`decoder.*`). H and W must be multiples of 16.
"""

from __future__ import annotations

import torch
from torch import nn


class DoubleConv(nn.Sequential):
    """(3×3 conv, padding 1 → BatchNorm → ReLU) × 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """2×2 transposed conv (C → C/2), concatenate the skip (C/2), double conv (C → C/2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        self.conv = DoubleConv(in_channels // 2 + out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    def __init__(self, num_classes: int = 1, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        w = [width * 2**i for i in range(5)]  # 64, 128, 256, 512, 1024
        self.encoder = nn.ModuleList(
            [DoubleConv(in_channels, w[0])] + [DoubleConv(w[i], w[i + 1]) for i in range(3)]
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(w[3], w[4])
        self.decoder = nn.ModuleList([Up(w[i + 1], w[i]) for i in reversed(range(4))])
        self.head = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 16 or x.shape[-1] % 16:
            raise ValueError(f"U-Net needs H and W divisible by 16, got {tuple(x.shape[-2:])}")
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, skip in zip(self.decoder, reversed(skips), strict=True):
            x = up(x, skip)
        return self.head(x)


def build_model(num_classes: int = 1, in_channels: int = 3, width: int = 64) -> nn.Module:
    return UNet(num_classes=num_classes, in_channels=in_channels, width=width)
