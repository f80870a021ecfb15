"""CubeBlock(96, 96) against nn.Conv2d(96, 96, 3, padding=1): latency ratios side by side.

Each case times the conv in its fastest memory layout (measured here, not assumed) and the block,
interleaved in one process, and reports medians after warm-up. Ratios are cube / conv: below 1
means the block is faster. Run: `python benchmarks/block.py [--batch 8] [--size 128] [--repeats 15]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from cubesearch import CubeBlock
from cubesearch.blocks import block_cost
from cubesearch.blocks.cost import conv_cost

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                     warmup: int) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


def make_cases(mode: str, conv: torch.nn.Module, cube: torch.nn.Module, x: torch.Tensor):
    """Callables for one mode: eval (no-grad, folded block), train forward, forward+backward."""
    if mode == "eval forward (no grad, folded)":
        conv.eval()
        folded = cube.eval().fold()

        def run(m):
            def f():
                with torch.inference_mode():
                    m(x)
            return f
        return run(conv), run(folded)
    if mode == "train forward":
        conv.train()
        cube.train()
        return (lambda: conv(x)), (lambda: cube(x))
    conv.train()
    cube.train()
    xg = x.detach().requires_grad_()

    def fb(m):
        def f():
            m(xg).sum().backward()
        return f
    return fb(conv), fb(cube)


def run(batch: int, size: int, channels: int, device: torch.device, dtype: torch.dtype,
        repeats: int, warmup: int) -> list[dict]:
    torch.manual_seed(0)
    rows = []
    modes = ("eval forward (no grad, folded)", "train forward", "forward+backward")
    for mode in modes:
        timings: dict[str, float] = {}
        for layout_name, layout in LAYOUTS.items():
            x = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
            x = x.contiguous(memory_format=layout)
            conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(device, dtype,
                                                                         memory_format=layout)
            cube = CubeBlock(channels, channels).to(device, dtype, memory_format=layout)
            conv_fn, cube_fn = make_cases(mode, conv, cube, x)
            t = time_interleaved({"conv": conv_fn, "cube": cube_fn}, device, repeats, warmup)
            timings[f"conv {layout_name}"] = t["conv"]
            timings[f"cube {layout_name}"] = t["cube"]
        best_conv = min(("conv contiguous", "conv channels_last"), key=timings.get)
        best_cube = min(("cube contiguous", "cube channels_last"), key=timings.get)
        rows.append({
            "device": device.type, "dtype": str(dtype).removeprefix("torch."), "mode": mode,
            "conv_ms": {k.split()[1]: v * 1e3 for k, v in timings.items() if k.startswith("conv")},
            "cube_ms": {k.split()[1]: v * 1e3 for k, v in timings.items() if k.startswith("cube")},
            "baseline": best_conv, "cube_layout": best_cube,
            "ratio": timings[best_cube] / timings[best_conv],
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--channels", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()

    targets = [(torch.device("cpu"), torch.float32)]
    if torch.cuda.is_available():
        targets += [(torch.device("cuda"), torch.float32), (torch.device("cuda"), torch.bfloat16)]
    rows = []
    for device, dtype in targets:
        rows += run(args.batch, args.size, args.channels, device, dtype, args.repeats, args.warmup)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    c, s = args.channels, args.size
    cube_cost, base = block_cost(c, c, height=s), conv_cost(c, c, height=s)
    console = Console(width=160)
    console.print(f"CubeBlock({c}, {c}) vs Conv2d({c}, {c}, 3) at {args.batch}×{c}×{s}×{s}; "
                  f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
                  f"MAC ratio (floor) {cube_cost.conv_macs_spec / base.flops:.3f}")
    table = Table()
    for col in ("device", "dtype", "mode", "conv contig ms", "conv CL ms", "cube contig ms",
                "cube CL ms", "cube/conv (fastest each)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["device"], r["dtype"], r["mode"],
                      f"{r['conv_ms']['contiguous']:.1f}", f"{r['conv_ms']['channels_last']:.1f}",
                      f"{r['cube_ms']['contiguous']:.1f}", f"{r['cube_ms']['channels_last']:.1f}",
                      f"{r['ratio']:.2f}×")
    console.print(table)


if __name__ == "__main__":
    main()
