"""`CubeBlock`: the drop-in replacement for a 3×3 conv, and `FoldedCubeBlock`, its eval form."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cubesearch.blocks.config import CubeConfig, fusion_groups, lattice_channels
from cubesearch.blocks.layers import (
    ACTIVATIONS,
    ChannelRouter,
    LatticeConv,
    SpatialAttention,
    fold_stride1_weight,
    fold_stride2_weight,
    grouped_lattice_conv,
    lattice_order,
)


def lattice_input(unit: nn.Module, x: Tensor) -> Tensor:
    """The lattice-order input of a unit's ℛ (`CubeUnit` and its folded form alike): its
    (pre-)router's output, or the input zero-padded to a multiple of 4 channels, then reordered."""
    if unit.router is not None:
        return unit.router(x)
    if unit.channels != unit.in_channels:
        x = F.pad(x, (0, 0, 0, 0, 0, unit.channels - unit.in_channels))
    return x.index_select(1, unit.order)


class CubeUnit(nn.Module):
    """One Cube Kernel block (depth 1): router → attention → ℛ + lattice conv → gate → fusion."""

    def __init__(self, in_channels: int, out_channels: int, config: CubeConfig, stride: int = 1):
        super().__init__()
        if config.router == "none" and in_channels % 4:
            raise ValueError(
                f"router='none' needs in_channels divisible by 4 (got {in_channels}); "
                "use router='pre' or 'post', which pad to a multiple of 4"
            )
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.config = config
        self.channels = lattice_channels(in_channels)
        q = self.channels // 4
        fusion_in = q if config.lattice_stride == 2 else self.channels
        self.groups = fusion_groups(config.groups, fusion_in, out_channels)
        k = config.fusion_kernel

        self.router = (
            ChannelRouter(in_channels, self.channels, lattice=True) if config.router == "pre" else None
        )
        if self.router is None:  # the input itself feeds ℛ: zero-pad, then lattice order
            self.register_buffer("order", lattice_order(self.channels), persistent=False)
        self.attention = SpatialAttention() if config.attention else None
        self.lattice = LatticeConv(self.channels, config.lattice_stride, config.act)
        self.fusion = nn.Conv2d(fusion_in, out_channels, k, stride=stride, padding=k // 2,
                                groups=self.groups, bias=True)
        self.post_router = (
            ChannelRouter(out_channels, out_channels) if config.router == "post" else None
        )

    def to_lattice(self, x: Tensor) -> Tensor:
        return lattice_input(self, x)

    def forward(self, x: Tensor) -> Tensor:
        r = self.to_lattice(x)
        y = self.lattice(r)
        if self.attention is not None:
            y = y * self.attention(r)
        y = self.fusion(y)
        return self.post_router(y) if self.post_router is not None else y


class CubeBlock(nn.Module):
    """Cube Kernel block replacing a 3×3 conv `in_channels → out_channels` at `stride`.

    `config.depth = d` stacks d units: the first maps C_in → C_out at `stride`, the others map
    C_out → C_out as `x + unit(x)`. The output shape equals the replaced conv's (padding 1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        config: CubeConfig | None = None,
        stride: int = 1,
    ) -> None:
        super().__init__()
        config = config or CubeConfig()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be positive, got {in_channels} → {out_channels}")
        if stride < 1:
            raise ValueError(f"stride must be ≥ 1, got {stride}")
        self.in_channels, self.out_channels, self.stride, self.config = (
            in_channels, out_channels, stride, config,
        )
        self.units = nn.ModuleList(
            [CubeUnit(in_channels, out_channels, config, stride)]
            + [CubeUnit(out_channels, out_channels, config, 1) for _ in range(config.depth - 1)]
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"CubeBlock expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        x = self.units[0](x)
        for unit in self.units[1:]:
            x = x + unit(x)
        return x

    def set_impl(self, impl: str) -> CubeBlock:
        """`fold` (default, fast) or `reference` (ℛ then a literal depthwise conv)."""
        if impl not in ("fold", "reference"):
            raise ValueError(f"impl must be 'fold' or 'reference', got {impl!r}")
        for unit in self.units:
            unit.lattice.impl = impl
        return self

    @torch.no_grad()
    def fold(self) -> FoldedCubeBlock:
        """Eval-mode copy with every BatchNorm folded and ℛ + lattice conv as one grouped conv."""
        return FoldedCubeBlock(self)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
            f"config=({self.config.short()})"
        )


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _fold_conv_bn(weight: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    scale, shift = _bn_scale_shift(bn)
    return weight * scale.view(-1, 1, 1, 1), shift


class FoldedCubeUnit(nn.Module):
    """Eval form of a `CubeUnit`: plain convs and one sigmoid gate, no BatchNorm.

    The lattice conv runs in the form each runtime is fastest at (measured, see
    benchmarks/results/deploy.md): in PyTorch at stride 2, ℛ (`pixel_shuffle`) then the stride-2
    depthwise conv, which oneDNN runs far faster than a grouped conv with 4 inputs per group;
    in an ONNX export, one grouped conv whose 2×2 kernel is padded top/left only (an explicit
    `F.pad` that the exporter fuses into the Conv's pads); under `torch.compile`, that grouped
    conv padded all round and its last row and column dropped, which Inductor runs fastest. At
    stride 1 the grouped conv's lattice order is brought back to canonical order by folding that
    permutation into the fusion conv's input channels where the fusion conv has one group; with
    several groups each group's channels are spread over the lattice order, so one channel gather
    stays.
    """

    def __init__(self, unit: CubeUnit) -> None:
        super().__init__()
        cfg = unit.config
        self.in_channels, self.channels = unit.in_channels, unit.channels
        self.lattice_stride = cfg.lattice_stride
        q = self.channels // 4
        if unit.router is not None:
            w, b = _fold_conv_bn(unit.router.conv.weight, unit.router.bn)
            self.router = nn.Conv2d(unit.in_channels, self.channels, 1, bias=True)
            self.router.weight.copy_(w)
            self.router.bias.copy_(b)
        else:  # router 'post' or 'none': the input itself feeds ℛ, zero-padded to C, reordered
            self.router = None
            self.register_buffer("order", unit.order.clone(), persistent=False)
        self.attention = None
        if unit.attention is not None:
            self.attention = nn.Conv2d(2, 1, unit.attention.conv.kernel_size,
                                       padding=unit.attention.conv.padding, bias=True)
            self.attention.load_state_dict(unit.attention.conv.state_dict())
        scale, shift = _bn_scale_shift(unit.lattice.bn)
        self.fusion = nn.Conv2d(unit.fusion.in_channels, unit.fusion.out_channels,
                                unit.fusion.kernel_size, stride=unit.fusion.stride,
                                padding=unit.fusion.padding, groups=unit.fusion.groups, bias=True)
        self.fusion.load_state_dict(unit.fusion.state_dict())
        self.register_buffer("canonical", None, persistent=False)  # set where a gather stays
        if self.lattice_stride == 2:
            depthwise = unit.lattice.weight * scale.view(-1, 1, 1, 1)
            self.register_buffer("lattice_depthwise", depthwise.detach().clone(), persistent=False)
            weight, bias = fold_stride2_weight(depthwise), shift
        else:  # BatchNorm(q) of cell k applies to all four outputs of group k
            weight = fold_stride1_weight(unit.lattice.weight) * scale.repeat_interleave(4).view(
                -1, 1, 1, 1
            )
            bias = shift.repeat_interleave(4)
            if self.fusion.groups == 1:  # fusion(y[:, canonical]) = fusion'(y)
                self.fusion.weight.copy_(self.fusion.weight[:, lattice_order(self.channels)])
            else:
                self.canonical = unit.lattice.canonical.clone()
        self.lattice_weight = nn.Parameter(weight.detach().clone())
        self.lattice_bias = nn.Parameter(bias.detach().clone())
        self.q = q
        self.act = ACTIVATIONS[cfg.act]()
        self.post_router = None
        if unit.post_router is not None:
            w, b = _fold_conv_bn(unit.post_router.conv.weight, unit.post_router.bn)
            self.post_router = nn.Conv2d(unit.out_channels, unit.out_channels, 1, bias=True)
            self.post_router.weight.copy_(w)
            self.post_router.bias.copy_(b)

    def lattice(self, r: Tensor) -> Tensor:
        """ℛ + lattice conv (BatchNorm folded) on the lattice-order `r`, before the activation."""
        if self.lattice_stride == 1:
            y = F.conv2d(r, self.lattice_weight, self.lattice_bias, padding=1, groups=self.q)
            return y if self.canonical is None else y.index_select(1, self.canonical)
        if torch.onnx.is_in_onnx_export():
            return F.conv2d(F.pad(r, (1, 0, 1, 0)), self.lattice_weight, self.lattice_bias,
                            groups=self.q)
        if torch.compiler.is_compiling():
            return grouped_lattice_conv(r, self.lattice_weight, self.lattice_bias, 2)
        return F.conv2d(F.pixel_shuffle(r, 2), self.lattice_depthwise, self.lattice_bias,
                        stride=2, padding=1, groups=self.q)

    def to_lattice(self, x: Tensor) -> Tensor:
        """The lattice-order input of ℛ: the folded router's, or the input padded and reordered
        as `CubeUnit.to_lattice` does (`lattice_input`)."""
        return lattice_input(self, x)

    def forward(self, x: Tensor) -> Tensor:
        r = self.to_lattice(x)
        y = self.act(self.lattice(r))
        if self.attention is not None:
            y = y * torch.sigmoid(self.attention(SpatialAttention.pool(r)))
        y = self.fusion(y)
        return self.post_router(y) if self.post_router is not None else y


class FoldedCubeBlock(nn.Module):
    """`CubeBlock.fold()`: same outputs as the block in eval mode, to float rounding."""

    def __init__(self, block: CubeBlock) -> None:
        super().__init__()
        self.in_channels, self.out_channels = block.in_channels, block.out_channels
        self.stride, self.config = block.stride, block.config
        with torch.no_grad():
            self.units = nn.ModuleList(FoldedCubeUnit(u) for u in block.units)
        self.to(next(block.parameters()).device)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = self.units[0](x)
        for unit in self.units[1:]:
            x = x + unit(x)
        return x


def fold_blocks(model: nn.Module) -> nn.Module:
    """The deploy form: a copy in eval mode with every `CubeBlock` replaced by its
    `FoldedCubeBlock` (a block reached under several names is folded once)."""
    model = copy.deepcopy(model).eval()
    folded: dict[int, FoldedCubeBlock] = {}
    for parent in list(model.modules()):
        for key, child in list(parent._modules.items()):
            if isinstance(child, CubeBlock):
                if id(child) not in folded:
                    folded[id(child)] = child.fold()
                parent._modules[key] = folded[id(child)]
    if isinstance(model, CubeBlock):
        return model.fold()
    return model.eval()
