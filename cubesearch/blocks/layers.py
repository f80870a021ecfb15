"""The pieces of a Cube Kernel block, each usable and testable alone (docs/design.md §1).

Channel order. The reconstruction ℛ puts channel `g·q + k` (group g ∈ 0..3, k < q) on cell g of
the k-th 2×2 lattice. Inside the block we keep tensors that feed ℛ in *lattice order*, where
channel `4k + g` holds canonical channel `g·q + k`: then ℛ is exactly `pixel_shuffle(2)`, and
ℛ + the stride-2 depthwise conv is one grouped conv with 4 consecutive inputs per group, so the
copy ℛ makes is never needed. The router simply stores its output rows in that order.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}


def lattice_order(channels: int) -> Tensor:
    """Index `p` with `p[4k + g] = g·q + k`: `x[:, p]` turns canonical order into lattice order."""
    if channels % 4:
        raise ValueError(f"lattice order needs a multiple of 4 channels, got {channels}")
    return torch.arange(channels).view(4, channels // 4).t().reshape(-1)


def reconstruct(x: Tensor) -> Tensor:
    """ℛ: `(B, C, H, W) → (B, C/4, 2H, 2W)` with `L[b, k, 2h+dy, 2w+dx] = x[b, (2dy+dx)·q + k, h, w]`."""
    if x.dim() != 4 or x.shape[1] % 4:
        raise ValueError(f"reconstruct needs (B, C, H, W) with C a multiple of 4, got {tuple(x.shape)}")
    b, c, h, w = x.shape
    q = c // 4
    return x.reshape(b, 2, 2, q, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, q, 2 * h, 2 * w)


def inverse_reconstruct(lattice: Tensor) -> Tensor:
    """ℛ⁻¹: `(B, q, 2H, 2W) → (B, 4q, H, W)`; needs even height and width."""
    if lattice.dim() != 4 or lattice.shape[2] % 2 or lattice.shape[3] % 2:
        raise ValueError(
            f"inverse_reconstruct needs (B, q, 2H, 2W) with even height and width, "
            f"got {tuple(lattice.shape)}"
        )
    b, q, h2, w2 = lattice.shape
    h, w = h2 // 2, w2 // 2
    return lattice.reshape(b, q, h, 2, w, 2).permute(0, 3, 5, 1, 2, 4).reshape(b, 4 * q, h, w)


class ChannelRouter(nn.Module):
    """Learnable 1×1 channel router + BatchNorm, initialised to the (zero-padded) identity.

    With `lattice=True` its output rows are stored in lattice order (see module docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, *, lattice: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.lattice = in_channels, out_channels, lattice
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.reset_identity()

    def source_channels(self) -> Tensor:
        """Canonical channel that each output row stands for."""
        if self.lattice:
            return lattice_order(self.out_channels)
        return torch.arange(self.out_channels)

    @torch.no_grad()
    def reset_identity(self) -> None:
        self.conv.weight.zero_()
        src = self.source_channels()
        rows = torch.nonzero(src < self.in_channels).flatten()
        self.conv.weight[rows, src[rows], 0, 0] = 1.0

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class SpatialAttention(nn.Module):
    """`A = sigmoid(conv7x7([mean_c x, max_c x]))`, shape (B, 1, H, W); applied later by the block."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=True)

    @staticmethod
    def pool(x: Tensor) -> Tensor:
        return torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.conv(self.pool(x)))


# Row (and, the same, column) taps of the stride-2 fold: the 3×3 tap `a` of the lattice conv reads
# lattice row 2i-1+a, i.e. original row i-1+u, lattice cell dy.  a -> (u, dy).
_S2_TAPS = ((0, 1), (1, 0), (1, 1))


@functools.cache
def _stride2_fold_index() -> Tensor:
    """For each 3×3 tap (a, b), its flat position in the (4, 2, 2) = (cell, u, v) folded kernel."""
    idx = []
    for a in range(3):
        u, dy = _S2_TAPS[a]
        for b in range(3):
            v, dx = _S2_TAPS[b]
            idx.append(((2 * dy + dx) * 2 + u) * 2 + v)
    return torch.tensor(idx)


@functools.cache
def _stride1_fold_index() -> Tensor:
    """For each (out cell, 3×3 tap), flat position in the (4 out, 4 in, 3, 3) folded kernel."""
    idx = []
    for dyo in range(2):
        for dxo in range(2):
            for a in range(3):
                r = dyo - 1 + a  # lattice row offset from 2i
                u, dy = r // 2 + 1, r % 2
                for b in range(3):
                    c = dxo - 1 + b
                    v, dx = c // 2 + 1, c % 2
                    idx.append((((2 * dyo + dxo) * 4 + (2 * dy + dx)) * 3 + u) * 3 + v)
    return torch.tensor(idx)


def fold_stride2_weight(weight: Tensor) -> Tensor:
    """Depthwise (q, 1, 3, 3) lattice weight → grouped (q, 4, 2, 2) weight on the original grid.

    Differentiable (an index copy), so training can run the folded form directly.
    """
    q = weight.shape[0]
    index = _stride2_fold_index().to(weight.device)
    flat = weight.new_zeros(q, 16).index_copy(1, index, weight.reshape(q, 9))
    return flat.view(q, 4, 2, 2)


def fold_stride1_weight(weight: Tensor) -> Tensor:
    """Depthwise (q, 1, 3, 3) lattice weight → grouped (4q, 4, 3, 3) weight (4 outputs per group)."""
    q = weight.shape[0]
    src = weight.reshape(q, 1, 9).expand(q, 4, 9).reshape(q, 36)
    flat = weight.new_zeros(q, 144).index_copy(1, _stride1_fold_index().to(weight.device), src)
    return flat.view(4 * q, 4, 3, 3)


def grouped_lattice_conv(x: Tensor, folded: Tensor, bias: Tensor | None, stride: int) -> Tensor:
    """Run a folded lattice conv on a lattice-order input `(B, C, H, W)`.

    Stride 2: `(B, q, H, W)`; stride 1: `(B, C, H, W)` in lattice order.
    """
    q = x.shape[1] // 4
    if stride == 2:
        # 2×2 kernel with padding top/left 1, bottom/right 0: pad 1 all round, drop the last row/col.
        h, w = x.shape[-2:]
        return F.conv2d(x, folded, bias, padding=1, groups=q)[..., :h, :w]
    return F.conv2d(x, folded, bias, padding=1, groups=q)


class LatticeConv(nn.Module):
    """ℛ, then a depthwise 3×3 conv (groups q, no bias) at `stride`, BatchNorm(q) and activation.

    Takes a lattice-order tensor (B, C, H, W). Returns (B, q, H, W) at stride 2, or at stride 1
    the (B, q, 2H, 2W) result brought back by ℛ⁻¹ to canonical (B, C, H, W).
    `impl="fold"` runs ℛ + conv as one grouped conv on the original grid (no ℛ copy);
    `impl="reference"` runs the definition literally. Both give the same values and gradients.
    """

    def __init__(self, channels: int, stride: int = 2, act: str = "gelu", impl: str = "fold") -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"LatticeConv needs a multiple of 4 channels, got {channels}")
        if stride not in (1, 2):
            raise ValueError(f"LatticeConv stride must be 1 or 2, got {stride}")
        self.channels, self.q, self.stride, self.impl = channels, channels // 4, stride, impl
        self.weight = nn.Parameter(torch.empty(self.q, 1, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Conv2d's default init
        self.bn = nn.BatchNorm2d(self.q)
        self.act = ACTIVATIONS[act]()
        self.register_buffer("canonical", torch.argsort(lattice_order(channels)), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.impl == "reference" or self.stride == 1:
            # Stride 1: BatchNorm(q) pools each k over all four lattice cells, which the grouped
            # form would split, so training runs the definition (eval folds it: `fold()`).
            y = F.conv2d(F.pixel_shuffle(x, 2), self.weight, stride=self.stride, padding=1,
                         groups=self.q)
            y = self.act(self.bn(y))
            return inverse_reconstruct(y) if self.stride == 1 else y
        y = grouped_lattice_conv(x, fold_stride2_weight(self.weight), None, 2)
        return self.act(self.bn(y))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, q={self.q}, stride={self.stride}, impl={self.impl!r}"
