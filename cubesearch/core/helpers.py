"""Small torch and text helpers every layer uses; imports nothing else of cubesearch but errors."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cubesearch.core.errors import CubesearchError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# torch's loggers mostly inherit their level from `torch`; some (fake tensors) log whole graphs
# at ERROR level when an op fails, which is a path failing, not a user problem.
_NOISY_LOGGERS = ("torch", "torch._export", "torch.export", "torch._dynamo", "torch.fx",
                  "torch._subclasses", "torch._subclasses.fake_tensor", "torch.fx.experimental",
                  "torch.fx.experimental.symbolic_shapes", "torch.fx.experimental.proxy_tensor",
                  "torch.fx.passes.utils.matcher_utils", "torch._functorch", "fvcore", "timm")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence library warnings and log chatter (torch.export, fx, timm, fvcore) for the block."""
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=False):
            lg.setLevel(lv)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter (or buffer) lives; CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def resolve_device(name: str | torch.device | None = "auto", *,
                   cuda_available: Callable[[], bool] = torch.cuda.is_available) -> torch.device:
    """`auto` / None: CUDA when there is one, else the CPU; `cpu`, `cuda` (`gpu`), `cuda:N`: that
    device, if this process can run on it (else one `CubesearchError` line saying why)."""
    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    text = "cuda" if text == "gpu" else text
    if text != "cpu" and not text.startswith("cuda"):
        raise CubesearchError(f"--device {name!r}: choose cpu or cuda (cuda:N for another GPU), or auto")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise CubesearchError(f"--device {name!r} is not a device (cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not cuda_available():
            raise CubesearchError(
                f"--device {name}: no CUDA GPU is visible here (torch {torch.__version__}, "
                f"torch.cuda.is_available() is False); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise CubesearchError(f"--device {name}: only {count} CUDA device(s) here")
    return device


def model_dtype(model: nn.Module) -> torch.dtype:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def zero_input(model: nn.Module, input_size: Sequence[int], batch: int = 1) -> torch.Tensor:
    """A zero batch `(batch, *input_size)` on the model's device, in its dtype."""
    return torch.zeros(batch, *input_size, device=model_device(model), dtype=model_dtype(model))


def parse_input_size(value: str | Sequence[int]) -> tuple[int, int, int]:
    """`3x512x512`, `512` (3 channels, square) or a sequence → (C, H, W)."""
    if isinstance(value, str):
        parts = [p for p in re.split(r"[x×,\s]+", value.strip().lower()) if p]
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise CubesearchError(
                f"input size {value!r} is not understood (expected CxHxW, e.g. 3x512x512)") from None
    else:
        nums = [int(v) for v in value]
    if len(nums) == 1:
        nums = [3, nums[0], nums[0]]
    if len(nums) != 3 or any(n < 1 for n in nums):
        raise CubesearchError(f"input size {value!r} must be three positive numbers CxHxW")
    return nums[0], nums[1], nums[2]


def shape_of(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)


def first_tensor(out: Any) -> torch.Tensor | None:
    """The first tensor in a model's output (a tensor, or nested lists, tuples and dicts)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            t = first_tensor(o)
            if t is not None:
                return t
    return None


def pair(v: Any) -> tuple[int, int]:
    """A conv attribute (kernel, stride, …) as a pair."""
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def close_names(name: str, names: Sequence[str], n: int = 3, *, cutoff: float = 0.5,
                loose: bool = False, sep: str = " (") -> str:
    """` (did you mean a, b?)` for the names close to `name`, or "" when none is. `loose`:
    ignore case and also take names containing `name` (long timm names); `sep="; "` gives
    `; did you mean a, b?`."""
    if not loose:
        hits = difflib.get_close_matches(name, list(names), n=n, cutoff=cutoff)
    else:
        lower = {s.lower(): s for s in names}
        found = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=cutoff)
        found = found or [s for s in lower if name.lower() in s][:n]
        hits = [lower[h] for h in found]
    if not hits:
        return ""
    return f"{sep}did you mean {', '.join(hits)}?" + (")" if sep.endswith("(") else "")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks (manifests, the trust store)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_named(ref: str) -> Any:
    """"package.module:attribute" → the attribute, importing the module only now (tables of
    backends and strategies name their entries so, to keep slow imports off start-up)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path in `path`'s folder to write to; on a clean exit it is fsynced and
    renamed onto `path` (readers see the old file or the new one, never half of one), on an
    error removed. The file gets the usual permissions (umask), not mkstemp's private ones."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically (`atomic_path`). Returns the path."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) on `path` held for the block; released if the process
    dies. Without fcntl (Windows) there is no lock: the last writer wins."""
    lock = Path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
