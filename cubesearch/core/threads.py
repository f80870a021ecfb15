"""How many CPU threads cubesearch's training and measurements use: chosen, not inherited.

Torch's default is one intra-op thread per core. On a small machine that another job shares, a
second thread mostly waits for the busy core: training `smp:Unet:resnet18` on 64² tiles ran
3.5× *slower* at 2 threads than at 1 on this project's 2-core machine with one other job
(17.4 s vs 60.2 s for one epoch of 192 tiles, load 0.9-2.6; see the CHANGELOG). So, unless
the user says otherwise (`cubesearch --threads N`,
`$CUBESEARCH_THREADS`, or `$OMP_NUM_THREADS`), cubesearch leaves one core for everything else:
`cores - 1` threads, at least 1.

The choice is applied through the environment (inherited by Ray workers and subprocesses) and,
when torch is already imported, `torch.set_num_threads`; nothing here imports torch, so the CLI's
`--help` stays fast.
"""

from __future__ import annotations

import os
import sys

from cubesearch.core.errors import CubesearchError

THREADS_ENV = "CUBESEARCH_THREADS"
_OMP_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def default_threads(cores: int | None = None) -> int:
    """`cores - 1`, at least 1: one core left for the rest of the machine."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, cores - 1)


def parse_threads(text: str | int | None, option: str = "--threads") -> int | None:
    """A positive thread count, or None for `auto` / unset."""
    if text is None or str(text).strip().lower() in ("", "auto"):
        return None
    try:
        n = int(str(text).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise CubesearchError(f"{option}: expected a positive number of threads or 'auto', got {text!r}")
    return n


def resolve_threads(requested: str | int | None = None) -> tuple[int, str]:
    """The thread count to use and where it came from: the option, $CUBESEARCH_THREADS,
    $OMP_NUM_THREADS (the user's own setting, kept), or the default."""
    n = parse_threads(requested)
    if n is not None:
        return n, "--threads"
    n = parse_threads(os.environ.get(THREADS_ENV), f"${THREADS_ENV}")
    if n is not None:
        return n, f"${THREADS_ENV}"
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "$OMP_NUM_THREADS"
    return default_threads(), "default (cores - 1)"


def apply_threads(requested: str | int | None = None) -> int:
    """Set the thread count for this process and the ones it starts; returns it."""
    n, _ = resolve_threads(requested)
    for var in (THREADS_ENV, *_OMP_VARS):
        os.environ[var] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    return n
