"""The deploy form of a model as files: the folded model written as ONNX and checked.

Below the latency tables (which time ops in ONNX Runtime) and the exporter (which writes
`model.onnx`): one writer, so what is timed is what is exported.

- `fold_error`: the deploy form (blocks folded) against the training form, max abs difference.
- `write_onnx`: the dynamo exporter at `ONNX_OPSET`, dynamic batch, constants folded, zero pads
  fused into their convs.
- `onnx_check`: ONNX Runtime running the file against the PyTorch model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

ONNX_OPSET = 18  # the dynamo exporter's lowest; ONNX Runtime, TensorRT ≥ 8.6 and OpenVINO read it
MAX_OPSET = 23


def fold_error(model: torch.nn.Module, deployed: torch.nn.Module, input_size: Sequence[int]) -> float:
    """Max abs difference of the deploy form vs the training form (eval mode), random input."""
    x = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((deployed(x) - model.eval()(x)).abs().max())


def write_onnx(model: torch.nn.Module, path: Path, input_size: Sequence[int], *,
               opset: int = ONNX_OPSET) -> None:
    """`model` as ONNX: input `image` with a dynamic batch, output `logits`, constants folded,
    and every zero `Pad` before a `Conv` fused into the Conv's own (asymmetric) pads."""
    from onnxscript.rewriter import rewrite  # lazy: only an ONNX export needs it
    from onnxscript.rewriter.rules.common import (
        fuse_pad_into_conv_rule,
        normalize_pad_format_conv_rule,
    )

    x = torch.randn(2, *input_size)  # batch 2: torch.export would specialise a batch of 1
    with torch.no_grad():
        program = torch.onnx.export(model.eval(), (x,), dynamo=True, verbose=False,
                                    opset_version=opset, input_names=["image"],
                                    output_names=["logits"], optimize=True,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    rewrite(program.model, pattern_rewrite_rules=[normalize_pad_format_conv_rule,
                                                  fuse_pad_into_conv_rule])
    program.save(str(path))


def onnx_check(model: torch.nn.Module, path: Path, input_size: Sequence[int]) -> float:
    """Max abs difference onnxruntime (running `path`) vs `model` on a random input of batch 2."""
    import onnxruntime as ort  # lazy: only an ONNX export needs it, and it is slow to import

    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return float((torch.from_numpy(got) - expected).abs().max())
