"""Where a CubeBlock(96, 96)'s time goes on this machine: per-op CPU profile, next to the conv.

Run: `python benchmarks/block_profile.py [--batch 8] [--size 128]`. Shows which aten ops bound
the block's latency (the small-channel grouped convs and the 1×1 router, in practice).
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from cubesearch import CubeBlock


def top_ops(fn, steps: int = 5, rows: int = 8) -> str:
    for _ in range(2):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


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
    block.train()
    print("== block, train forward ==\n" + top_ops(lambda: block(x)))


if __name__ == "__main__":
    main()
