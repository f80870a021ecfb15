"""Trace path 3: forward hooks on every conv while the model runs on fake tensors (real zero
tensors as the last resort); also the output shapes of named modules (insertion points)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from cubesearch.core.errors import CubesearchError, one_line
from cubesearch.core.helpers import close_names, eval_mode, first_tensor, quiet, shape_of
from cubesearch.plan.sites.fake import fake_input, fake_mode, is_fake, real_input, record_calls
from cubesearch.plan.sites.records import Call


def trace_hooks(model: nn.Module, x: torch.Tensor, convs: dict[str, nn.Conv2d], *, fake: bool
                 ) -> tuple[list[Call], tuple[int, ...] | None, str]:
    calls: list[Call] = []
    handles = record_calls(convs, calls)
    try:
        with torch.no_grad():
            if fake:
                with fake_mode(x):
                    out = model(x)
            else:  # the last resort: a real run (after a memory check)
                if is_fake(x):
                    x = real_input(model, tuple(x.shape[1:]), x.shape[0],
                                   what="tracing on real tensors (the fake-tensor paths failed)")
                out = model(x)
    finally:
        for h in handles:
            h.remove()
    t = first_tensor(out)
    return calls, (shape_of(t) if t is not None else None), ""


def module_output_shapes(model: nn.Module, names: Iterable[str], input_size: Sequence[int],
                         batch: int = 1) -> dict[str, list[tuple[int, ...]]]:
    """Output shape of every call of the named modules (fake tensors, real ones as fallback)."""
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise CubesearchError(f"no module named {missing[0]!r} in the model"
                              f"{close_names(missing[0], list(modules))}")
    shapes: dict[str, list[tuple[int, ...]]] = {n: [] for n in names}
    x = fake_input(model, input_size, batch)

    def run(fake: bool) -> None:
        nonlocal x
        for v in shapes.values():
            v.clear()
        handles = []
        for n in names:
            def hook(mod: nn.Module, args: tuple, out: Any, n: str = n) -> None:
                t = out if isinstance(out, torch.Tensor) else None
                shapes[n].append(shape_of(t) if t is not None else ())
            handles.append(modules[n].register_forward_hook(hook))
        try:
            with torch.no_grad():
                if fake:
                    with fake_mode(x):
                        model(x)
                else:
                    x = real_input(model, input_size, batch, what="recording module output shapes "
                                   "on real tensors (the fake run failed)")
                    model(x)
        finally:
            for h in handles:
                h.remove()

    with eval_mode(model), quiet():
        try:
            run(fake=True)
        except Exception:  # noqa: BLE001
            try:
                run(fake=False)
            except Exception as exc:  # noqa: BLE001
                c, h, w = input_size
                raise CubesearchError(
                    f"the model rejects input {batch}×{c}×{h}×{w}: "
                    f"{one_line(exc, with_type=True, limit=300)}") from exc
    return shapes
