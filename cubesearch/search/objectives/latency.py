"""The `latency` cost objective: a plan's predicted latency (its price before training, from
this device's latency table) and the evaluated model's measured latency (what a trained trial
records), both in ms."""

from __future__ import annotations

import torch
from torch import nn

from cubesearch.blocks import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.cost.latency import measure
from cubesearch.cost.latency.backends import make_runner
from cubesearch.cost.latency.fingerprint import current_fingerprint
from cubesearch.cost.latency.profile import torch_threads
from cubesearch.search.context import SearchContext


def estimate_ms(ctx: SearchContext, sites_cfg: dict[str, CubeConfig]) -> float:
    assert ctx.latency is not None, "a latency objective loads the latency model (search.limits)"
    return ctx.latency.latency_ms(sites_cfg)


def measure_ms(ctx: SearchContext, model: nn.Module) -> float:
    """The evaluated model's measured latency (ms): deploy form in the table's backend (under
    ort: the ONNX graph `export` writes), layout, threads, batch and dtype, the median of 5 runs
    after a warm-up."""
    lat = ctx.latency
    assert lat is not None, "a latency objective loads the latency model (search.limits)"
    fp = lat.fingerprint
    here = current_fingerprint(fp)
    if here != fp:  # e.g. a Ray worker on another machine: its time would not compare
        diffs = "; ".join(fp.differences(here))
        raise CubesearchError(f"this trial runs on another device than the latency table's "
                              f"({diffs}): latency is measured where the table was profiled")
    device = torch.device("cuda" if fp.device == "cuda" else "cpu")
    size = ctx.settings.input_size
    with torch_threads(fp.threads or None):
        run = make_runner(fp.backend, measure.deploy_form(model.cpu()),
                          torch.randn(fp.batch, *size), layout=lat.layout, device=device,
                          dtype=getattr(torch, fp.dtype), threads=torch.get_num_threads())
        us = measure.time_interleaved({"m": run}, measure.make_timer(device), repeats=5,
                                      warmup=1)["m"]
    return us / 1e3
