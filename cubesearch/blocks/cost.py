"""Analytic cost of a Cube block: parameters and FLOPs, as fvcore counts the code that runs.

fvcore counts one multiply-accumulate as one FLOP for convs (no bias term), BatchNorm as
5·numel in training and 2·numel in eval, and ignores elementwise ops, pooling along channels and
the sigmoid gate. The folded lattice conv it sees is the grouped 2×2 conv of docs/design.md "Exact
folds", so it also counts that kernel's 7 zero taps per channel; `lattice_macs_spec` is the
docs/design.md formula's 9·q·HW, for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

from cubesearch.blocks.config import CubeConfig, fusion_groups, lattice_channels


@dataclass(frozen=True)
class BlockCost:
    params: int
    flops: int  # what fvcore counts for the block as implemented (per batch of `batch`)
    conv_macs_spec: int  # docs/design.md formula's conv terms: router, 9q lattice, fusion, gate conv


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _unit_cost(c_in: int, c_out: int, cfg: CubeConfig, stride: int, h: int, w: int,
               bn_per_elem: int, impl: str) -> tuple[int, int, int, int, int]:
    c = lattice_channels(c_in)
    q = c // 4
    k = cfg.fusion_kernel
    fusion_in = q if cfg.lattice_stride == 2 else c
    g = fusion_groups(cfg.groups, fusion_in, c_out)
    ho, wo = conv_out(h, k, stride, k // 2), conv_out(w, k, stride, k // 2)
    params = flops = spec = 0
    if cfg.router == "pre":
        params += c_in * c + 2 * c
        flops += c_in * c * h * w + bn_per_elem * c * h * w
        spec += c_in * c * h * w
    if cfg.attention:
        params += 2 * 49 + 1
        flops += 98 * h * w
        spec += 98 * h * w
    params += 9 * q + 2 * q
    if cfg.lattice_stride == 2:
        executed = 16 * q * (h + 1) * (w + 1) if impl == "fold" else 9 * q * h * w
        flops += executed + bn_per_elem * q * h * w
        spec += 9 * q * h * w
    else:
        flops += 9 * q * 4 * h * w + bn_per_elem * q * 4 * h * w
        spec += 9 * q * 4 * h * w
    fusion = c_out * (fusion_in // g) * k * k
    params += fusion + c_out
    flops += fusion * ho * wo
    spec += fusion * ho * wo
    if cfg.router == "post":
        params += c_out * c_out + 2 * c_out
        flops += c_out * c_out * ho * wo + bn_per_elem * c_out * ho * wo
        spec += c_out * c_out * ho * wo
    return params, flops, spec, ho, wo


def block_cost(
    in_channels: int,
    out_channels: int,
    config: CubeConfig | None = None,
    stride: int = 1,
    height: int = 128,
    width: int | None = None,
    *,
    batch: int = 1,
    training: bool = True,
    impl: str = "fold",
) -> BlockCost:
    """Parameters and fvcore FLOPs of `CubeBlock(in, out, config, stride)` on an H×W input."""
    cfg = config or CubeConfig()
    width = height if width is None else width
    bn = 5 if training else 2
    params, flops, spec, ho, wo = _unit_cost(in_channels, out_channels, cfg, stride, height,
                                             width, bn, impl)
    for _ in range(cfg.depth - 1):
        p, f, s, ho, wo = _unit_cost(out_channels, out_channels, cfg, 1, ho, wo, bn, impl)
        params, flops, spec = params + p, flops + f, spec + s
    return BlockCost(params=params, flops=batch * flops, conv_macs_spec=batch * spec)


def conv_cost(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
              height: int = 128, width: int | None = None, *, groups: int = 1,
              bias: bool = True, batch: int = 1) -> BlockCost:
    """The same figures for the `nn.Conv2d` a block replaces (padding kernel//2)."""
    width = height if width is None else width
    ho, wo = conv_out(height, kernel, stride, kernel // 2), conv_out(width, kernel, stride,
                                                                     kernel // 2)
    weights = out_channels * (in_channels // groups) * kernel * kernel
    macs = batch * weights * ho * wo
    return BlockCost(params=weights + (out_channels if bias else 0), flops=macs,
                     conv_macs_spec=macs)
