"""`ElasticSite`: one module that acts as the original 3×3 conv or as a Cube block under any
configuration the search space allows at that site, switched at run time.

What is shared, and why (the supernet's weight-sharing contract; tests/test_supernet.py checks it):

- keep / replace: the original conv is the `conv` child; the block's training never touches it.
- `router`: `pre` is one `ChannelRouter(C_in → C)` per unit, skipped for `none` and `post`;
  `post` keeps its own `ChannelRouter(C_out → C_out)` (another place in the unit, another shape).
- `attention`: one `SpatialAttention` per unit, skipped when off.
- `depth`: `depth = d` runs the first d units (unit 1 maps C_in → C_out at the site's stride,
  units 2.. map C_out → C_out as `x + unit(x)`).
- `lattice_stride`: 1 and 2 share the depthwise lattice weight (q, 1, 3, 3) and its
  BatchNorm(q), because the stride-2 conv computes exactly the even-position outputs of the
  stride-1 conv on the same lattice, so one kernel serves both; each stride keeps its own fusion
  conv (weight and bias), which reads q channels at stride 2 and C = 4q at stride 1.
- `fusion_kernel`: a 1×1 fusion is the centre tap `W[:, :, 1:2, 1:2]` of the 3×3 fusion weight.
- `groups`: G ∈ {1, 2, 4} are block-diagonal slices of one dense (G = 1) fusion weight; group g
  uses rows g·C_out/G … (g+1)·C_out/G and columns g·C_in/G … (g+1)·C_in/G.
- `act`: no weights; the activation is applied functionally.

Shapes nest, so one tensor is trained by every configuration that uses it: a sub-network scored in
the supernet is a slice of the same weights, never a copy. Where shapes do not nest (the fusion
input width across lattice strides, the post router) the configurations keep their own weights,
as in Once-for-All's elastic kernel/width and BigNAS's sliced children.

The unit's forward mirrors `CubeUnit` line by line (same functions, same order), so
`copy_into(block, cfg)` gives a `CubeBlock` whose eval-mode output equals this module's under
`cfg` to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cubesearch.blocks import ChannelRouter, CubeBlock, CubeConfig, SpatialAttention, lattice_order
from cubesearch.blocks.config import fusion_groups, lattice_channels
from cubesearch.blocks.layers import fold_stride2_weight, grouped_lattice_conv, inverse_reconstruct
from cubesearch.errors import CubesearchError

_ACT = {"gelu": F.gelu, "relu": F.relu}


def fusion_slice(weight: Tensor, kernel: int, groups: int) -> Tensor:
    """The grouped, `kernel`×`kernel` fusion weight a config uses, sliced from the dense 3×3 (or
    1×1) weight `(C_out, C_in, K, K)`: the centre tap when kernel < K, and the G diagonal blocks
    `weight[g·o:(g+1)·o, g·i:(g+1)·i]` stacked along the output axis for `groups` G."""
    big = weight.shape[-1]
    if kernel != big:
        if kernel != 1 or big != 3:
            raise ValueError(f"cannot slice a {kernel}×{kernel} kernel from a {big}×{big} one")
        weight = weight[:, :, 1:2, 1:2]
    if groups == 1:
        return weight
    c_out, c_in = weight.shape[:2]
    o, i = c_out // groups, c_in // groups
    return torch.cat([weight[g * o:(g + 1) * o, g * i:(g + 1) * i] for g in range(groups)], 0)


class ElasticUnit(nn.Module):
    """The weights of one unit position of every configuration (`in_channels → out_channels` at
    `stride`); `forward(x, cfg)` runs the unit that `cfg` describes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 configs: Iterable[CubeConfig]) -> None:
        super().__init__()
        configs = list(configs)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.channels = c = lattice_channels(in_channels)
        self.q = c // 4
        routers = {cfg.router for cfg in configs}
        self.router = ChannelRouter(in_channels, c, lattice=True) if "pre" in routers else None
        self.register_buffer("order", lattice_order(c), persistent=False)
        self.attention = SpatialAttention() if any(cfg.attention for cfg in configs) else None
        # the lattice conv's weight and BatchNorm, shared by lattice strides 1 and 2
        self.lattice_weight = nn.Parameter(torch.empty(self.q, 1, 3, 3))
        nn.init.kaiming_uniform_(self.lattice_weight, a=5**0.5)  # as LatticeConv
        self.lattice_bn = nn.BatchNorm2d(self.q)
        kmax = max(cfg.fusion_kernel for cfg in configs)
        self.fusion = nn.ModuleDict()
        for s in sorted({cfg.lattice_stride for cfg in configs}):
            fin = self.q if s == 2 else c
            self.fusion[f"s{s}"] = nn.Conv2d(fin, out_channels, kmax, stride=stride,
                                             padding=kmax // 2, bias=True)
        self.post_router = ChannelRouter(out_channels, out_channels) if "post" in routers else None

    def fusion_groups(self, cfg: CubeConfig) -> int:
        fin = self.q if cfg.lattice_stride == 2 else self.channels
        return fusion_groups(cfg.groups, fin, self.out_channels)

    def fusion_weight(self, cfg: CubeConfig) -> Tensor:
        conv = self.fusion[f"s{cfg.lattice_stride}"]
        return fusion_slice(conv.weight, cfg.fusion_kernel, self.fusion_groups(cfg))

    def to_lattice(self, x: Tensor, cfg: CubeConfig) -> Tensor:
        if cfg.router == "pre":
            return self.router(x)
        if self.channels != self.in_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.channels - self.in_channels))
        return x.index_select(1, self.order)

    def lattice(self, r: Tensor, cfg: CubeConfig) -> Tensor:
        act = _ACT[cfg.act]
        if cfg.lattice_stride == 1:
            y = F.conv2d(F.pixel_shuffle(r, 2), self.lattice_weight, stride=1, padding=1,
                         groups=self.q)
            return inverse_reconstruct(act(self.lattice_bn(y)))
        y = grouped_lattice_conv(r, fold_stride2_weight(self.lattice_weight), None, 2)
        return act(self.lattice_bn(y))

    def forward(self, x: Tensor, cfg: CubeConfig) -> Tensor:
        r = self.to_lattice(x, cfg)
        y = self.lattice(r, cfg)
        if cfg.attention:
            y = y * self.attention(r)
        k = cfg.fusion_kernel
        conv = self.fusion[f"s{cfg.lattice_stride}"]
        y = F.conv2d(y, self.fusion_weight(cfg), conv.bias, stride=self.stride, padding=k // 2,
                     groups=self.fusion_groups(cfg))
        return self.post_router(y) if cfg.router == "post" else y

    def norms(self, cfg: CubeConfig) -> list[nn.BatchNorm2d]:
        """The BatchNorms `cfg` runs in this unit."""
        out = [self.lattice_bn]
        if cfg.router == "pre":
            out.insert(0, self.router.bn)
        if cfg.router == "post":
            out.append(self.post_router.bn)
        return out

    @torch.no_grad()
    def copy_into(self, unit: nn.Module, cfg: CubeConfig) -> None:
        """Copy the weights `cfg` uses into a `CubeUnit` built with `cfg`."""
        if cfg.router == "pre":
            unit.router.load_state_dict(self.router.state_dict())
        if cfg.attention:
            unit.attention.load_state_dict(self.attention.state_dict())
        unit.lattice.weight.copy_(self.lattice_weight)
        unit.lattice.bn.load_state_dict(self.lattice_bn.state_dict())
        unit.fusion.weight.copy_(self.fusion_weight(cfg))
        unit.fusion.bias.copy_(self.fusion[f"s{cfg.lattice_stride}"].bias)
        if cfg.router == "post":
            unit.post_router.load_state_dict(self.post_router.state_dict())


class ElasticSite(nn.Module):
    """Stands where a 3×3 conv was: runs `conv` (keep), or the Cube block of the active config.

    `configs` are the configurations the search space allows at this site; `set_config(cfg)`
    activates one (None: the conv). State-dict keys: `conv.*` (the original conv's, so a
    baseline loads by name with the `conv.` suffix) and `units.N.*` (the block weights).
    """

    def __init__(self, conv: nn.Conv2d, configs: Iterable[CubeConfig], name: str = "") -> None:
        super().__init__()
        configs = list(dict.fromkeys(configs))
        if not configs:
            raise CubesearchError(f"site {name!r}: the search space allows no configuration here")
        self.name = name
        self.conv = conv
        self.configs = frozenset(configs)
        self.config_list = sorted(configs, key=lambda c: c.to_json())  # a fixed order for sampling
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.stride = int(conv.stride[0])
        for cfg in configs:  # the same checks CubeUnit makes, before anything is built
            if cfg.router == "none" and (self.in_channels % 4 or
                                         (cfg.depth > 1 and self.out_channels % 4)):
                raise CubesearchError(f"site {name!r}: router='none' needs C_in (and C_out for "
                                      f"depth > 1) divisible by 4; got {self.in_channels} → "
                                      f"{self.out_channels}")
        depth = max(cfg.depth for cfg in configs)
        self.units = nn.ModuleList(
            [ElasticUnit(self.in_channels, self.out_channels, self.stride, configs)]
            + [ElasticUnit(self.out_channels, self.out_channels, 1, configs)
               for _ in range(depth - 1)])
        ref = conv.weight
        self.units.to(device=ref.device, dtype=ref.dtype)
        self.active: CubeConfig | None = None

    def check(self, cfg: CubeConfig) -> None:
        if cfg in self.configs:
            return
        bad = []
        for knob in CubeConfig.model_fields:
            allowed = sorted({getattr(c, knob) for c in self.configs}, key=str)
            if getattr(cfg, knob) not in allowed:
                bad.append(f"{knob}={getattr(cfg, knob)!r} (allowed: {', '.join(map(repr, allowed))})")
        why = "; ".join(bad) or "this combination of knobs is not allowed here"
        raise CubesearchError(f"site {self.name!r}: config ({cfg.short()}) is outside the search "
                              f"space: {why}")

    def set_config(self, cfg: CubeConfig | None) -> None:
        if cfg is not None:
            self.check(cfg)
        self.active = cfg

    def run(self, x: Tensor, cfg: CubeConfig) -> Tensor:
        """The block of `cfg` on `x` (whatever config is active)."""
        y = self.units[0](x, cfg)
        for unit in self.units[1:cfg.depth]:
            y = y + unit(y, cfg)
        return y

    def forward(self, x: Tensor) -> Tensor:
        if self.active is None:
            return self.conv(x)
        return self.run(x, self.active)

    def block_parameters(self) -> list[nn.Parameter]:
        return list(self.units.parameters())

    def norms(self, cfg: CubeConfig | None) -> list[nn.BatchNorm2d]:
        """BatchNorms inside the block that `cfg` runs (none for the conv)."""
        if cfg is None:
            return []
        return [bn for unit in self.units[:cfg.depth] for bn in unit.norms(cfg)]

    @torch.no_grad()
    def copy_into(self, block: CubeBlock, cfg: CubeConfig) -> CubeBlock:
        """Copy the weights of `cfg`'s path into `block` (a `CubeBlock` built with `cfg`)."""
        if block.config != cfg or len(block.units) != cfg.depth:
            raise CubesearchError(f"site {self.name!r}: block config ({block.config.short()}) is "
                                  f"not ({cfg.short()})")
        for unit, elastic in zip(block.units, self.units[:cfg.depth], strict=True):
            elastic.copy_into(unit, cfg)
        return block

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
                f"configs={len(self.configs)}, active={self.active.short() if self.active else 'conv'}")
