"""Trace path 2: `torch.fx` symbolic tracing (timm's leaf modules kept whole), shapes
propagated on fake tensors; convs inside leaf modules are seen through forward hooks."""

from __future__ import annotations

import contextlib
import inspect
import io
from typing import Any

import torch
from torch import fx, nn
from torch.fx.experimental.meta_tracer import MetaProxy, MetaTracer
from torch.fx.passes.shape_prop import ShapeProp

from cubesearch.core.errors import one_line
from cubesearch.core.helpers import first_tensor, shape_of
from cubesearch.plan.sites.fake import fake_mode, record_calls
from cubesearch.plan.sites.records import Call


def _timm_leaves() -> tuple[tuple[type, ...], tuple[Any, ...]]:
    try:  # lazy: timm is slow to import and optional for user models
        from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    except ImportError:  # pragma: no cover
        return (), ()
    return tuple(get_notrace_modules()), tuple(get_notrace_functions())


def trace_fx(model: nn.Module, x: torch.Tensor, convs: dict[str, nn.Conv2d]
              ) -> tuple[list[Call], tuple[int, ...] | None, str]:
    graph, root, how = _fx_graph(model, x)
    gm = fx.GraphModule(root, graph)
    # Convs the graph calls directly are call_module nodes; convs hidden inside leaf modules
    # are caught by hooks while shapes propagate.
    direct = {n.target for n in graph.nodes if n.op == "call_module" and n.target in convs}
    hooked: list[Call] = []
    handles = record_calls({n: c for n, c in convs.items() if n not in direct}, hooked)
    try:
        # ShapeProp prints a traceback of its own when a node fails: the failure is reported
        # (and the next path tried) by the caller, so keep the terminal clean.
        with fake_mode(x), contextlib.redirect_stderr(io.StringIO()):
            out = ShapeProp(gm).propagate(x)
    finally:
        for h in handles:
            h.remove()
    calls: list[Call] = []
    order = {id(c): i for i, c in enumerate(hooked)}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in direct:
            arg = node.args[0]
            calls.append(Call(node.target, tuple(arg.meta["tensor_meta"].shape),
                               tuple(node.meta["tensor_meta"].shape)))
    calls.extend(sorted(hooked, key=lambda c: order[id(c)]))
    t = first_tensor(out)
    return calls, (shape_of(t) if t is not None else None), how


def _fx_graph(model: nn.Module, x: torch.Tensor) -> tuple[Any, nn.Module, str]:
    """Plain symbolic tracing (timm's leaf modules and functions kept whole); if the forward
    branches on shapes, fx's MetaTracer, whose proxies carry meta tensors so `x.shape` is
    concrete. Returns (graph, root, note)."""
    leaf_types, leaf_fns = _timm_leaves()

    def is_leaf(tracer: Any, m: nn.Module, qualname: str, base: Any) -> bool:
        if leaf_types and isinstance(m, leaf_types):
            return True
        return base(tracer, m, qualname)

    class Tracer(fx.Tracer):
        def __init__(self) -> None:
            super().__init__(autowrap_functions=leaf_fns)

        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return is_leaf(self, m, qualname, fx.Tracer.is_leaf_module)

    class Proxy(MetaProxy):
        @property
        def device(self) -> Any:
            # the real device of the fake value, not "meta": `t.to(x.device)` must stay on it
            value = self.__dict__.get("_tensor_meta")
            return value.device if isinstance(value, torch.Tensor) else super().device

    class Meta(MetaTracer):
        def __init__(self) -> None:
            super().__init__(autowrap_functions=leaf_fns)

        def proxy(self, node: Any) -> Any:
            return Proxy(node, self)

        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return is_leaf(self, m, qualname, MetaTracer.is_leaf_module)

        def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any,
                         **kw: Any) -> Any:
            proxy = super().create_proxy(kind, target, args, kwargs, *rest, **kw)
            if kind == "get_attr":
                # MetaTracer gives parameters used functionally (F.conv2d(x, self.weight)) a
                # meta value, which clashes with the fake CPU activations: use the tensor itself
                # (fake mode wraps it on use).
                self._disable_module_getattr = True
                try:
                    value: Any = self.root
                    for atom in str(target).split("."):
                        value = getattr(value, atom)
                finally:
                    self._disable_module_getattr = False
                if isinstance(value, torch.Tensor):
                    proxy.install_tensor_meta(value)
            return proxy

    tracer = Tracer()
    try:
        return tracer.trace(model), tracer.root, ""
    except Exception as plain:  # noqa: BLE001 - shape-dependent control flow, most often
        params = list(inspect.signature(model.forward).parameters)
        if not params:
            raise
        meta = Meta()
        try:
            # The proxies' values are fake tensors on the model's device (meta tensors would
            # clash with the real parameters and BatchNorm statistics of the model).
            with fake_mode(x) as mode:
                graph = meta.trace(model, meta_args={params[0]: mode.from_tensor(x)})
        except Exception:  # noqa: BLE001
            raise plain from None
        why = one_line(plain, with_type=True, limit=300)
        return graph, meta.root, f"fx: plain symbolic_trace failed ({why}); " \
                                 "traced with fx's MetaTracer (concrete shapes)"
