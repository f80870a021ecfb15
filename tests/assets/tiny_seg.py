"""A tiny encoder-decoder for fast search tests: 4 eligible 3×3 convs, 2 in the decoder."""

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class TinySeg(nn.Module):
    def __init__(self, num_classes: int = 1, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(conv_bn(in_channels, w), conv_bn(w, 2 * w), nn.MaxPool2d(2),
                                     conv_bn(2 * w, 2 * w))
        self.decoder = nn.Sequential(conv_bn(2 * w, 2 * w), conv_bn(2 * w, w))
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.encoder(x)
        y = F.interpolate(y, size=x.shape[-2:], mode="nearest")
        return self.head(self.decoder(y))


def build_model(num_classes: int = 1, in_channels: int = 3) -> nn.Module:
    return TinySeg(num_classes, in_channels)
