"""`trace_convs`: every conv call at the reference input, by the first trace path that works."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from cubesearch.core.errors import CubesearchError, one_line
from cubesearch.core.helpers import eval_mode, quiet
from cubesearch.plan.sites.export_trace import trace_export
from cubesearch.plan.sites.fake import block_caches_safe, fake_input
from cubesearch.plan.sites.fx_trace import trace_fx
from cubesearch.plan.sites.hook_trace import trace_hooks
from cubesearch.plan.sites.records import Call

TRACE_PATHS = ("export", "fx", "hooks")


def trace_convs(model: nn.Module, input_size: Sequence[int], *, trace: str = "auto", batch: int = 1
                ) -> tuple[list[Call], str, list[str], tuple[int, ...] | None]:
    """Every nn.Conv2d call at the reference input: (calls, path used, notes, output shape)."""
    if trace not in ("auto", *TRACE_PATHS):
        raise CubesearchError(f"unknown trace path {trace!r} (choose auto, {', '.join(TRACE_PATHS)})")
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    x = fake_input(model, input_size, batch)  # shapes only: no memory, whatever the size
    notes: list[str] = []
    attempts: list[tuple[str, Any]] = []
    if trace in ("auto", "export"):
        attempts.append(("export", lambda: trace_export(model, x, convs)))
    if trace in ("auto", "fx"):
        attempts.append(("fx", lambda: trace_fx(model, x, convs)))
    if trace in ("auto", "hooks"):
        attempts.append(("hooks", lambda: trace_hooks(model, x, convs, fake=True)))
        attempts.append(("hooks", lambda: trace_hooks(model, x, convs, fake=False)))
    last: BaseException | None = None
    with eval_mode(model), quiet(), block_caches_safe():
        for i, (path, attempt) in enumerate(attempts):
            real = path == "hooks" and i == len(attempts) - 1
            try:
                calls, out_shape, note = attempt()
            except Exception as exc:  # noqa: BLE001 - the next path may work
                last = exc
                label = "hooks (real tensors)" if real else ("hooks (fake tensors)"
                                                            if path == "hooks" else path)
                notes.append(f"{label} failed: {one_line(exc, with_type=True, limit=300)}")
                continue
            if path == "hooks":
                notes.append("shapes from " + ("real zero tensors" if real else "fake tensors"))
            if note:
                notes.append(note)
            return calls, path, notes, out_shape
    assert last is not None
    c, h, w = input_size
    if trace != "auto":
        raise CubesearchError(f"tracing with {trace!r} failed: {one_line(last, with_type=True, limit=300)}")
    raise CubesearchError(f"the model rejects input {batch}×{c}×{h}×{w}: "
                          f"{one_line(last, with_type=True, limit=300)}")
