"""Timing in the deploy form: eval mode, Cube blocks folded, a layout chosen by measurement.

- `make_timer(device)`: wall clock (`time.perf_counter`) on a CPU; CUDA events around the call,
  with `torch.cuda.synchronize()` before and after, on a GPU.
- `time_interleaved(fns, timer)`: median microseconds per call of each function after warm-up,
  the functions timed round-robin so that drift in the machine's load hits all of them alike.
- `deploy_form(model)`: a model as it is deployed (eval, every `CubeBlock` folded).
- `best_layout(module, x)`: the faster of contiguous and channels_last for this module.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from cubesearch.blocks import fold_blocks

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


class Timer(Protocol):
    kind: str

    def __call__(self, fn: Callable[[], Any]) -> float:
        """Seconds one call of `fn` takes on the device."""


class CpuTimer:
    kind = "perf_counter"

    def __call__(self, fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


class CudaTimer:
    """CUDA events on the current stream, the device synchronised before and after."""

    kind = "cuda_events"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, fn: Callable[[], Any]) -> float:
        cuda = torch.cuda
        cuda.synchronize(self.device)
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        cuda.synchronize(self.device)
        return start.elapsed_time(end) / 1e3  # ms → s


def make_timer(device: torch.device | str) -> Timer:
    dev = torch.device(device) if isinstance(device, str) else device
    return CudaTimer(dev) if dev.type == "cuda" else CpuTimer()


def time_interleaved(fns: Mapping[str, Callable[[], Any]], timer: Timer, *, repeats: int = 5,
                     warmup: int = 1) -> dict[str, float]:
    """Median microseconds per call of each function, timed round-robin after `warmup` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            samples[name].append(timer(fn))
    return {name: statistics.median(s) * 1e6 for name, s in samples.items()}


def deploy_form(model: nn.Module) -> nn.Module:
    """A copy in eval mode with every `CubeBlock` replaced by its `FoldedCubeBlock`."""
    return fold_blocks(model)


def prepare(module: nn.Module, x: torch.Tensor, layout: str, device: torch.device,
            dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor]:
    fmt = LAYOUTS[layout]
    module = module.to(device=device, dtype=dtype, memory_format=fmt).eval()
    return module, x.to(device=device, dtype=dtype).contiguous(memory_format=fmt)


def runner(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return module(x)
    return run


def best_layout(module: nn.Module, x: torch.Tensor, timer: Timer, *, device: torch.device,
                dtype: torch.dtype, repeats: int = 5, warmup: int = 1,
                layouts: Sequence[str] = tuple(LAYOUTS)) -> tuple[str, dict[str, float]]:
    """The fastest layout for `module` at input `x` and the time in each (µs, interleaved)."""
    fns = {}
    for layout in layouts:
        m, xi = prepare(copy.deepcopy(module), x, layout, device, dtype)
        fns[layout] = runner(m, xi)
    times = time_interleaved(fns, timer, repeats=repeats, warmup=warmup)
    return min(times, key=times.get), times
