"""Trace path 1: `torch.export` (fake tensors); each conv node maps back to its module."""

from __future__ import annotations

import re

import torch
from torch import nn

from cubesearch.core.helpers import shape_of
from cubesearch.plan.sites.records import Call


def clean_path(path: str) -> str:
    """`L['self'].encoder.layer1[0]` / `L__self___encoder` forms → `encoder.layer1.0`."""
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\['([^']+)'\]", r".\1", path)
    return path.strip(".")


def trace_export(model: nn.Module, x: torch.Tensor, convs: dict[str, nn.Conv2d]
                  ) -> tuple[list[Call], tuple[int, ...] | None, str]:
    aten = torch.ops.aten
    targets = {aten.conv2d.default, aten.convolution.default}
    if hasattr(aten.conv2d, "padding"):
        targets.add(aten.conv2d.padding)
    ep = torch.export.export(model, (x,), strict=False)
    param_of = dict(ep.graph_signature.inputs_to_parameters)
    # A conv registered under several names (`nn.Sequential(conv, act, conv)`) is one module:
    # every alias maps back to the name `named_modules()` gives it.
    canonical = {id(m): n for n, m in convs.items()}
    alias = {n: canonical[id(m)] for n, m in model.named_modules(remove_duplicate=False)
             if id(m) in canonical}
    by_weight = {f"{n}.weight": c for n, c in alias.items()}
    calls: list[Call] = []
    out_shape = None
    for node in ep.graph_module.graph.nodes:
        if node.op == "output":
            vals = [a.meta.get("val") for a in node.args[0] if hasattr(a, "meta")] if isinstance(
                node.args[0], (list, tuple)) else []
            out_shape = next((shape_of(v) for v in vals if isinstance(v, torch.Tensor)), None)
            continue
        if node.op != "call_function" or node.target not in targets:
            continue
        name = None
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path = clean_path(list(stack.values())[-1][0])
            name = alias.get(path)
        if name is None:
            weight = node.args[1]
            fqn = param_of.get(getattr(weight, "name", ""), "")
            name = by_weight.get(fqn)
        if name is None:
            continue  # a functional conv with no nn.Conv2d behind it: not a site
        calls.append(Call(name, shape_of(node.args[0].meta["val"]), shape_of(node.meta["val"])))
    return calls, out_shape, ""
