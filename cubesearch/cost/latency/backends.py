"""Where a latency table's ops are timed: the runtime a deployer runs the model in.

- `torch`: PyTorch eager in the deploy form (eval, blocks folded), in the layout the model runs
  fastest in (contiguous or channels_last, chosen on the unconverted model).
- `ort`: ONNX Runtime's CPU provider on the folded module as `cubesearch export` writes it
  (`deploy.write_onnx`), NCHW input, the table's thread count intra-op and one inter-op thread.

`torch.compile` is not offered as a table's backend: every op would be its own Inductor build
(about 8 s each on a 2-core CPU, measured), so a table of r18's default space (about 2,000 ops)
would take hours to compile before anything is timed; docs/limits.md has the figures.

A backend turns (module, input) into a zero-argument callable; `measure.time_interleaved` times
the callables of one comparison round-robin, whatever backend made them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cubesearch.core.errors import CubesearchError
from cubesearch.cost.deploy import write_onnx
from cubesearch.cost.latency.measure import prepare, runner

BACKENDS = ("torch", "ort")
DEFAULT_BACKEND = "torch"
NOT_OFFERED = {"compile": "torch.compile builds every op with Inductor (about 8 s each here), "
                          "hours for a table"}


def check_backend(name: str, option: str = "--backend") -> str:
    """`name` if it is a backend, else one error naming the option and the choices."""
    key = str(name).strip().lower()
    if key in BACKENDS:
        return key
    why = f" ({NOT_OFFERED[key]})" if key in NOT_OFFERED else ""
    raise CubesearchError(f"{option} {name!r}: choose {' or '.join(BACKENDS)}{why}")


def check_target(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    """One error when `backend` cannot time on `device` in `dtype`."""
    if backend == "ort" and device.type != "cpu":
        raise CubesearchError("--backend ort times ONNX Runtime's CPU provider: use --device cpu "
                              "(or --backend torch on the GPU)")
    if backend == "ort" and dtype != torch.float32:
        raise CubesearchError("--backend ort times float32 models: use --dtype float32")


def layouts(backend: str) -> tuple[str, ...]:
    """The layouts a model may be timed in: ORT takes NCHW and picks its own inside."""
    return ("contiguous", "channels_last") if backend == "torch" else ("contiguous",)


def runtime_version(backend: str) -> str:
    """What the fingerprint records besides torch: ONNX Runtime's version for `ort`."""
    if backend != "ort":
        return ""
    try:
        import onnxruntime as ort  # lazy: optional and slow to import
    except ImportError:
        raise CubesearchError("--backend ort needs onnxruntime: pip install onnxruntime") from None
    return f"onnxruntime {ort.__version__}"


def make_runner(backend: str, module: nn.Module, x: torch.Tensor, *, layout: str,
                device: torch.device, dtype: torch.dtype, threads: int) -> Callable[[], Any]:
    """A zero-argument callable running `module` on `x` in `backend` (module in eval mode)."""
    if backend == "torch":
        m, xi = prepare(module, x, layout, device, dtype)
        return runner(m, xi)
    return ort_runner(module, x, threads=threads)


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort  # lazy: optional and slow to import

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = max(1, threads), 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_runner(module: nn.Module, x: torch.Tensor, *, threads: int) -> Callable[[], Any]:
    """`module` written as `export` writes it, loaded in an ONNX Runtime session (the file is
    gone once the session holds the graph)."""
    with tempfile.TemporaryDirectory(prefix="cubesearch-ort-") as folder:
        path = Path(folder) / "op.onnx"
        write_onnx(module.eval().float(), path, tuple(x.shape[1:]))
        session = ort_session(path, threads)
    feed = {session.get_inputs()[0].name: x.float().contiguous().numpy()}

    def run() -> Any:
        return session.run(None, feed)
    return run
