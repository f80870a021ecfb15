"""Memory bounds for analysis: refuse, in one line, a real forward pass that would not fit.

Tracing and pricing run on fake tensors, whose memory does not grow with the input size. A few
steps still run the model for real (fvcore's FLOP count, the last-resort hooks trace, the
shapes of insertion points); before them, `check_real_forward` estimates the memory that pass
needs from the traced shapes (float32: the input plus every conv's output, which bounds what a
forward in `no_grad` keeps alive at once on the models cubesearch handles) and compares it with
the memory available (`/proc/meminfo`'s MemAvailable, the cgroup's limit, or
`$CUBESEARCH_MEMORY_LIMIT` in bytes). Over it: a `CubesearchError` naming the size and what to do,
instead of the operating system killing the process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cubesearch.core.errors import CubesearchError

LIMIT_ENV = "CUBESEARCH_MEMORY_LIMIT"
SHARE = 0.8  # of the available memory a real pass may take


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes this process may still allocate, or None when it cannot be told."""
    env = os.environ.get(LIMIT_ENV)
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise CubesearchError(f"${LIMIT_ENV}={env!r}: expected a number of bytes") from None
    known = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(known) if known else None


def forward_bytes(input_shape: Sequence[int], outputs: Iterable[Sequence[int]],
                  bytes_per_value: int = 4) -> int:
    """Estimated memory of a real forward pass: the input and every traced output, float32."""
    return bytes_per_value * (math.prod(input_shape) + sum(math.prod(s) for s in outputs))


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def check_real_forward(what: str, need: int, *, size_text: str, hint: str) -> None:
    """Raise a one-line `CubesearchError` when `need` bytes do not fit in the available memory."""
    available = available_memory()
    if available is None or need <= SHARE * available:
        return
    raise CubesearchError(f"{what} at {size_text} runs the model for real and needs about "
                          f"{_gb(need)}, more than the {_gb(available)} available: {hint}")
