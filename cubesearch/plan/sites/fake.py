"""Tracing without real compute: fake tensors, kept out of the blocks' caches; call recorders."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode, is_fake
from torch.utils.hooks import RemovableHandle

from cubesearch.blocks import layers
from cubesearch.core.helpers import model_device, model_dtype, shape_of, zero_input
from cubesearch.core.resources import check_real_forward
from cubesearch.plan.sites.records import Call


@contextlib.contextmanager
def block_caches_safe() -> Iterator[None]:
    """Keep fake tensors out of process-wide tensor caches while tracing.

    `cubesearch.blocks.layers` caches its fold index tensors with `functools.cache`. Their first
    call, if it happens inside a fake-tensor mode (torch.export, our shape runs), would cache a
    FakeTensor, and every later real forward of a Cube block would then fail. Fill the caches
    with real tensors before tracing, and drop anything fake that got in anyway afterwards.
    """
    fns = [getattr(layers, n) for n in ("_stride2_fold_index", "_stride1_fold_index")
           if hasattr(getattr(layers, n, None), "cache_clear")]

    def repair() -> None:
        for fn in fns:
            if is_fake(fn()) or fn().device.type == "meta":
                fn.cache_clear()
                fn()

    repair()
    try:
        yield
    finally:
        repair()


@contextlib.contextmanager
def fake_mode(x: torch.Tensor | None = None) -> Iterator[Any]:
    """A fake-tensor mode (real tensors allowed in), with the blocks' caches kept real. Given
    a fake `x` (`fake_input`), its own mode, so that the input and the run agree."""
    mode = x.fake_mode if x is not None and is_fake(x) else FakeTensorMode(allow_non_fake_inputs=True)
    with block_caches_safe(), mode:
        yield mode


def fake_input(model: nn.Module, input_size: Any, batch: int = 1) -> torch.Tensor:
    """A fake zero batch `(batch, *input_size)` on the model's device and dtype: shapes and no
    memory, whatever the size (`torch.export` and the fake runs take it as it is)."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        return torch.zeros(batch, *input_size, device=model_device(model), dtype=model_dtype(model))


def real_input(model: nn.Module, input_size: Any, batch: int = 1, *, what: str) -> torch.Tensor:
    """A real zero batch for a step that must run the model for real, refused in one line when
    even a rough estimate of that run (32 activations of the input's size) would not fit."""
    need = 32 * 4 * batch * math.prod(input_size)
    check_real_forward(what, need, size_text="×".join(map(str, (batch, *input_size))),
                       hint="give a smaller --input-size")
    return zero_input(model, input_size, batch)


def record_calls(convs: dict[str, nn.Conv2d], calls: list[Call]) -> list[RemovableHandle]:
    """Forward hooks appending each call of `convs` to `calls`; remove them when done."""
    handles = []
    for name, conv in convs.items():
        def hook(mod: nn.Module, args: tuple, out: Any, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                calls.append(Call(name, shape_of(args[0]), shape_of(out)))
        handles.append(conv.register_forward_hook(hook))
    return handles
