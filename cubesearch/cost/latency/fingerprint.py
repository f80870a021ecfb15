"""The device a latency table was measured on, as a comparable fingerprint.

A latency figure is only meaningful on the device, thread count, torch build, batch size, dtype
and runtime (`backend`: PyTorch eager or ONNX Runtime, and the runtime's version) it was measured
with: `Fingerprint` is those, and a table is reused only when its fingerprint equals the current
one (`cubesearch.cost.latency.table`).
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from typing import Any

import torch

from cubesearch.core import helpers
from cubesearch.core.errors import CubesearchError
from cubesearch.cost.latency.backends import DEFAULT_BACKEND, runtime_version

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class Fingerprint:
    """What a latency depends on besides the model: device, threads, torch, batch, dtype."""

    device: str  # "cpu" or "cuda"
    name: str  # CPU model (e.g. "AMD EPYC 7B13") or GPU name (e.g. "NVIDIA H200")
    threads: int  # torch intra-op threads (CPU); 0 on a GPU
    torch: str
    batch: int
    dtype: str
    backend: str = "torch"  # what ran the ops: torch (eager) or ort (ONNX Runtime CPU)
    runtime: str = ""  # the backend's version beside torch's, e.g. "onnxruntime 1.32.0"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        optional = {"backend": "torch", "runtime": ""}  # tables from before backends
        try:
            return cls(**{k: data[k] if k in data or k not in optional else optional[k]
                          for k in cls.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise CubesearchError(f"latency table: bad device fingerprint ({exc})") from None

    def label(self) -> str:
        where = (f"{self.name}, {self.threads} thread{'s' if self.threads != 1 else ''}"
                 if self.device == "cpu" else self.name)
        runtime = f"{self.runtime}, " if self.runtime else ""
        return (f"{self.device} ({where}), backend {self.backend}, {runtime}torch {self.torch}, "
                f"batch {self.batch}, {self.dtype}")

    def differences(self, other: Fingerprint) -> list[str]:
        """`field: mine → other` for every field that differs."""
        return [f"{k}: {getattr(self, k)!r} → {getattr(other, k)!r}"
                for k in self.__dataclass_fields__ if getattr(self, k) != getattr(other, k)]


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` says."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda` or `cuda:N` → a device this process can run on (one `error:` line if not);
    `cubesearch.core.helpers.resolve_device`, asking this module's `cuda_available`."""
    return helpers.resolve_device(name, cuda_available=cuda_available)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    key = DTYPE_ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in DTYPES:
        raise CubesearchError(f"--dtype {name!r}: choose {', '.join(DTYPES)}")
    if device.type == "cpu" and key == "float16":
        raise CubesearchError("--dtype float16 is for --device cuda (CPU convs in float16 are not "
                              "a deployment form); use float32 or bfloat16 on a CPU")
    return DTYPES[key]


def resolve_threads(threads: int | None) -> int:
    """The intra-op thread count to measure with (default: torch's current one)."""
    if threads is None:
        return torch.get_num_threads()
    if threads < 1:
        raise CubesearchError(f"--threads {threads}: must be at least 1")
    cores = os.cpu_count() or threads
    if threads > cores:
        raise CubesearchError(f"--threads {threads}: this machine has {cores} CPU cores")
    return threads


def device_fingerprint(device: torch.device | str = "cpu", *, threads: int | None = None,
                       batch: int = 1, dtype: torch.dtype | str = torch.float32,
                       backend: str = DEFAULT_BACKEND) -> Fingerprint:
    """The fingerprint of measuring on `device` in `backend` now (`threads` default: torch's
    current count)."""
    dev = torch.device(device) if isinstance(device, str) else device
    dt = dtype if isinstance(dtype, torch.dtype) else DTYPES[DTYPE_ALIASES.get(dtype, dtype)]
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        n_threads = 0
    else:
        name = cpu_name()
        n_threads = resolve_threads(threads)
    return Fingerprint(device=dev.type, name=name, threads=n_threads,
                       torch=str(torch.__version__), batch=int(batch),
                       dtype=str(dt).removeprefix("torch."), backend=backend,
                       runtime=runtime_version(backend))


def current_fingerprint(like: Fingerprint | None = None, *, backend: str | None = None
                        ) -> Fingerprint:
    """This machine in `backend` (default: `like`'s, else torch), measured the way `like` was
    (threads, batch, dtype); a CPU if no table."""
    backend = backend or (like.backend if like is not None else DEFAULT_BACKEND)
    if like is None:
        return device_fingerprint("cpu", backend=backend)
    if like.device == "cuda" and not torch.cuda.is_available():
        return device_fingerprint("cpu", batch=like.batch, backend=backend)
    fits = like.device == "cpu" and 1 <= like.threads <= (os.cpu_count() or 1)
    return device_fingerprint(like.device, threads=like.threads if fits else None,
                              batch=like.batch, dtype=like.dtype, backend=backend)
