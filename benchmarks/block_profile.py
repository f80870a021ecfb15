"""Where a CubeBlock(96, 96)'s time goes on this machine: per-op CPU profile, next to the conv.

Run: `python benchmarks/block_profile.py [--batch 8] [--size 128]`. Shows which aten ops bound
the block's latency (the small-channel grouped convs and the 1×1 router, in practice).
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from cubesearch import CubeBlock


def top_ops(fn, steps: int = 5, rows: int = 8, by_shape: bool = False) -> str:
    """The ops that take the most self CPU time; `by_shape` splits them by input shapes (tells
    the block's convs apart)."""
    for _ in range(2):
        fn()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=by_shape) as prof:
        for _ in range(steps):
            fn()
    return prof.key_averages(group_by_input_shape=by_shape).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=28,
        max_shapes_column_width=70)


def conv_macs(folded: torch.nn.Module, x: torch.Tensor) -> str:
    """Each conv of the folded block: its shape and MACs, to read next to the per-shape times."""
    lines, hooks = [], []
    for name, m in folded.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            def hook(mod, inp, out, name=name):
                k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
                macs = out.numel() * k
                lines.append(f"  {name}: {mod.in_channels}→{mod.out_channels}, k{mod.kernel_size[0]}, "
                             f"groups {mod.groups}, stride {mod.stride[0]}, input {tuple(inp[0].shape)}: "
                             f"{macs / 1e9:.3f} GMACs")
            hooks.append(m.register_forward_hook(hook))
    with torch.inference_mode():
        folded(x)
    for h in hooks:
        h.remove()
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    cl = torch.channels_last
    x = torch.randn(args.batch, 96, args.size, args.size).contiguous(memory_format=cl)
    conv = torch.nn.Conv2d(96, 96, 3, padding=1).to(memory_format=cl).eval()
    block = CubeBlock(96, 96).to(memory_format=cl)
    folded = block.eval().fold()
    with torch.inference_mode():
        print("== conv, eval ==\n" + top_ops(lambda: conv(x)))
        print("== folded block, eval ==\n" + top_ops(lambda: folded(x)))
        print("== folded block's convs ==\n" + conv_macs(folded, x))
        print("== folded block, eval, by input shape ==\n" + top_ops(lambda: folded(x), rows=10,
                                                                     by_shape=True))
    block.train()
    print("== block, train forward ==\n" + top_ops(lambda: block(x)))


if __name__ == "__main__":
    main()
