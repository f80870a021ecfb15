"""`find_sites`: trace a model, keep its eligible convs, count its FLOPs: the `SiteReport`."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import replace

from torch import nn

from cubesearch.core.errors import CubesearchError, one_line
from cubesearch.core.helpers import pair, parse_input_size
from cubesearch.core.resources import check_real_forward, forward_bytes
from cubesearch.models.flops import count_params, reference_flops_by_module
from cubesearch.models.load import is_smp_model
from cubesearch.plan.sites import records
from cubesearch.plan.sites.hook_trace import module_output_shapes
from cubesearch.plan.sites.records import Site, SiteReport
from cubesearch.plan.sites.tracing import trace_convs


def find_sites(model: nn.Module, input_size: Sequence[int] | str = (3, 512, 512), *,
               depthwise: bool = False, strided: bool = False, trace: str = "auto",
               flops: bool = True, insertions: Iterable[str] = (), name: str | None = None
               ) -> SiteReport:
    """Trace `model` at `input_size` (C, H, W) and report its eligible 3×3 convs.

    `flops=True` also counts the model's FLOPs with fvcore (eval mode, batch 1), which the cost
    model needs as its base. `insertions` names modules whose output shapes to record, for
    insertion points. The model is left as it was (mode and weights).
    """
    size = parse_input_size(input_size)
    t0 = time.perf_counter()
    calls, path, notes, out_shape = trace_convs(model, size, trace=trace)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    smp = is_smp_model(model)
    grouped: dict[str, list[records.Call]] = {}
    for call in calls:
        grouped.setdefault(call.name, []).append(call)
    sites: list[Site] = []
    skipped: dict[str, str] = {}
    total = 0
    for conv_name, conv_calls in grouped.items():
        conv = convs[conv_name]
        macs = sum(records.conv_macs(conv, c.out_shape) for c in conv_calls)
        total += macs
        reason = records.conv_eligibility(conv, depthwise=depthwise, strided=strided)
        if reason is None and any(len(c.in_shape) != 4 for c in conv_calls):
            reason = "unbatched input"
        if reason is not None:
            skipped[conv_name] = reason
            continue
        first = conv_calls[0]
        sites.append(Site(
            name=conv_name, in_channels=conv.in_channels, out_channels=conv.out_channels,
            kernel=pair(conv.kernel_size), stride=pair(conv.stride)[0], groups=conv.groups,
            dilation=pair(conv.dilation), padding=(1, 1), bias=conv.bias is not None,
            input_hw=(first.in_shape[2], first.in_shape[3]),
            output_hw=(first.out_shape[2], first.out_shape[3]), calls=len(conv_calls),
            call_shapes=tuple((c.in_shape[2], c.in_shape[3]) for c in conv_calls), macs=macs,
            params=sum(p.numel() for p in conv.parameters(recurse=False)),
            role=records.role_of(conv_name, smp=smp)))
    prediction = records.prediction_conv(calls, out_shape)
    sites = [replace(s, prediction=True) if s.name == prediction else s for s in sites]
    uncalled = [n for n in convs if n not in grouped]
    seconds = time.perf_counter() - t0
    base_flops = None
    t1 = time.perf_counter()
    if flops:  # fvcore runs the model for real: refused in one line if that would not fit
        check_real_forward("counting FLOPs with fvcore",
                           forward_bytes((1, *size), (c.out_shape for c in calls)),
                           size_text="×".join(map(str, (1, *size))),
                           hint="give a smaller --input-size (FLOPs scale with H×W), or list the "
                                "sites alone with `cubesearch sites --no-flops`, which traces on "
                                "fake tensors at any size")
        try:
            base_flops, by_module = reference_flops_by_module(model, size)
        except CubesearchError:
            raise
        except Exception as exc:  # noqa: BLE001
            notes.append(f"fvcore failed: {one_line(exc, with_type=True, limit=300)}")
        else:
            sites = [replace(s, flops=by_module.get(s.name, s.macs)) for s in sites]
    output_shapes = module_output_shapes(model, insertions, size) if insertions else {}
    return SiteReport(
        model=name or type(model).__name__, input_size=size, sites=sites, skipped=skipped,
        trace_path=path, trace_notes=notes, base_flops=base_flops,
        base_params=count_params(model), conv_macs=total,
        seconds=seconds, flops_seconds=time.perf_counter() - t1, depthwise=depthwise,
        strided=strided, smp=smp,
        uncalled=uncalled, output_shapes=output_shapes,
        output_shape=out_shape)
