"""Sites: the 3×3 convs of a model where a Cube block can go (DESIGN.md §2).

`find_sites(model, input_size)` traces the model at the reference input without real compute
where it can, and records every `nn.Conv2d` call with its shapes. Tracing tries, in order:

1. `export`: `torch.export.export(model, (x,), strict=False)` (fake tensors); each
   `aten.conv2d` node maps back to its module through `nn_module_stack` (or its weight's name).
2. `fx`: `torch.fx` symbolic tracing with timm's leaf modules / functions, shapes propagated on
   fake tensors (convs inside leaf modules are seen through forward hooks).
3. `hooks`: a `named_modules()` walk with forward hooks on every conv, running the model on fake
   tensors, and as a last resort on real (zero) tensors under `torch.no_grad()`.

The report says which path was used and why the earlier ones failed. A conv module called at
several places is one site with `calls > 1`; its MACs sum over the calls.

Eligible by default (DESIGN.md §2): `nn.Conv2d`, kernel 3×3, dilation 1, groups 1, padding 1,
stride 1. `depthwise=True` admits depthwise convs (groups = C_in), `strided=True` strided ones.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from cubesearch.errors import CubesearchError, one_line

TRACE_PATHS = ("export", "fx", "hooks")
ROLES = ("encoder", "decoder")


# --- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """One eligible conv module (possibly called several times) at the reference input."""

    name: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: int
    groups: int
    dilation: tuple[int, int]
    padding: tuple[int, int]
    bias: bool
    input_hw: tuple[int, int]  # input H×W of the first call
    output_hw: tuple[int, int]
    calls: int
    call_shapes: tuple[tuple[int, int], ...]  # input H×W of every call
    macs: int  # as fvcore counts the conv (one MAC = one FLOP), summed over calls, batch 1
    params: int
    role: str  # "encoder" (backbone) or "decoder" (decoder / neck / head)
    # fvcore's count of everything inside the module (eval, batch 1): `macs`, plus any extra
    # work its forward does (e.g. weight standardisation); None when FLOPs were not counted.
    flops: int | None = None
    # The model's prediction conv: the last conv call, its output channels those of the model's
    # output (it computes the logits). Search spaces leave it alone unless asked (`prediction_conv`).
    prediction: bool = False

    @property
    def resolution(self) -> str:
        return f"{self.input_hw[0]}×{self.input_hw[1]}"

    @property
    def depthwise(self) -> bool:
        return self.groups > 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("kernel", "dilation", "padding", "input_hw", "output_hw"):
            d[key] = list(d[key])
        d["call_shapes"] = [list(s) for s in self.call_shapes]
        return d


@dataclass
class SiteReport:
    """What `find_sites` found. Iterating over it yields the eligible `Site`s."""

    model: str
    input_size: tuple[int, int, int]
    sites: list[Site]
    skipped: dict[str, str]  # conv module name → why it is not eligible
    trace_path: str
    trace_notes: list[str]
    base_flops: int | None  # fvcore, eval mode, batch 1 (None if flops=False or fvcore failed)
    base_params: int
    conv_macs: int  # every conv call the trace saw (eligible or not), batch 1
    seconds: float  # tracing and site analysis
    flops_seconds: float = 0.0  # fvcore's count of the base model (real compute)
    depthwise: bool = False
    strided: bool = False
    smp: bool = False
    uncalled: list[str] = field(default_factory=list)  # conv modules forward never reached
    output_shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    output_shape: tuple[int, ...] | None = None  # the model's output (first tensor), batch 1

    def __iter__(self) -> Iterator[Site]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sites]

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def by_role(self, role: str) -> list[Site]:
        return [s for s in self.sites if s.role == role]

    @property
    def eligible_macs(self) -> int:
        return sum(s.macs for s in self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_size": list(self.input_size),
            "trace_path": self.trace_path,
            "trace_notes": list(self.trace_notes),
            "seconds": round(self.seconds, 4),
            "flops_seconds": round(self.flops_seconds, 4),
            "base_flops": self.base_flops,
            "base_gflops": None if self.base_flops is None else self.base_flops / 1e9,
            "base_params": self.base_params,
            "conv_macs": self.conv_macs,
            "eligible_macs": self.eligible_macs,
            "depthwise": self.depthwise,
            "strided": self.strided,
            "n_sites": len(self.sites),
            "n_encoder": len(self.by_role("encoder")),
            "n_decoder": len(self.by_role("decoder")),
            "sites": [s.to_dict() for s in self.sites],
            "skipped": dict(self.skipped),
            "uncalled": list(self.uncalled),
        }


@dataclass
class _Call:
    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


# --- eligibility and roles ---------------------------------------------------------------------


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def conv_eligibility(conv: nn.Module, *, depthwise: bool = False, strided: bool = False) -> str | None:
    """None if a Cube block can replace `conv` under these rules, else the reason why not."""
    if not isinstance(conv, nn.Conv2d):
        return f"not an nn.Conv2d ({type(conv).__name__})"
    k = _pair(conv.kernel_size)
    if k != (3, 3):
        return f"{k[0]}×{k[1]} kernel"
    if _pair(conv.dilation) != (1, 1):
        return f"dilation {conv.dilation[0]}"
    if conv.padding != "same" and _pair(conv.padding) != (1, 1):
        return f"padding {conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)[0]}"
    if conv.groups != 1:
        if conv.groups == conv.in_channels and conv.in_channels > 1:
            if not depthwise:
                return "depthwise (use --depthwise)"
        else:
            return f"grouped conv (groups={conv.groups})"
    s = _pair(conv.stride)
    if s[0] != s[1]:
        return f"non-square stride {s}"
    if s[0] != 1 and not strided:
        return f"stride {s[0]} (use --strided)"
    return None


def replaceable(conv: nn.Module) -> str | None:
    """What `convert` accepts: any conv a block can stand in for (depthwise and strided too)."""
    return conv_eligibility(conv, depthwise=True, strided=True)


_DECODER = re.compile(
    r"^(decoder|decoders|dec\d*|decode_head|auxiliary_head|aux_head|head|heads|neck|necks|fpn|"
    r"aspp|ppm|psp\w*|up\w*|deconv\w*|segmentation_head|seg_head|classification_head|classifier|"
    r"cls_head|fuse\w*|fusion\w*|lateral\w*|out\w*|final\w*|refine\w*|expand\w*|expanding\w*|"
    r"expansive\w*|merge\w*|mask_head|pred\w*|logits?)$",
    re.IGNORECASE,
)
_ENCODER = re.compile(
    r"^(encoder|encoders|enc\d*|backbone|body|stem|conv_stem|features|feature_extractor|"
    r"down\w*|contract\w*|inc|input\w*|layer\d*|stages?|blocks?|patch_embed\w*|bottleneck|"
    r"bridge|center|trunk|base|pool\w*)$",
    re.IGNORECASE,
)


def role_of(name: str, *, smp: bool = False) -> str:
    """`encoder` (backbone) or `decoder` (decoder, neck, head).

    smp models: everything under `encoder.` is the encoder. Other models: the first component
    of the qualified name that matches a known encoder or decoder word decides (decoder, head,
    neck, up*, out*… vs encoder, backbone, stem, down*, layerN…); no match means backbone, which
    is right for classifiers. `--include/--exclude` override this when choosing sites.
    """
    if smp:
        return "encoder" if name == "encoder" or name.startswith("encoder.") else "decoder"
    for part in name.split("."):
        if _DECODER.match(part):
            return "decoder"
        if _ENCODER.match(part):
            return "encoder"
    return "encoder"


# --- helpers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence library warnings and log chatter (torch.export, fx, timm) while tracing."""
    # torch's loggers mostly inherit their level from `torch`; some (fake tensors) log whole
    # graphs at ERROR level when an op fails, which is a path failing, not a user problem.
    names = ("torch", "torch._export", "torch.export", "torch._dynamo", "torch.fx",
             "torch._subclasses", "torch._subclasses.fake_tensor", "torch.fx.experimental",
             "torch.fx.experimental.symbolic_shapes", "torch.fx.experimental.proxy_tensor",
             "torch.fx.passes.utils.matcher_utils", "torch._functorch", "fvcore", "timm")
    loggers = [logging.getLogger(n) for n in names]
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
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


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


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)


def first_tensor(out: Any) -> torch.Tensor | None:
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


@contextlib.contextmanager
def block_caches_safe() -> Iterator[None]:
    """Keep fake tensors out of process-wide tensor caches while tracing.

    `cubesearch.blocks.layers` caches its fold index tensors with `functools.cache`. Their first
    call, if it happens inside a fake-tensor mode (torch.export, our shape runs), would cache a
    FakeTensor, and every later real forward of a Cube block would then fail. Fill the caches
    with real tensors before tracing, and drop anything fake that got in anyway afterwards.
    """
    from torch._subclasses.fake_tensor import is_fake

    from cubesearch.blocks import layers

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
def _fake_mode() -> Iterator[Any]:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with block_caches_safe(), FakeTensorMode(allow_non_fake_inputs=True) as mode:
        yield mode


def _clean_path(path: str) -> str:
    """`L['self'].encoder.layer1[0]` / `L__self___encoder` forms → `encoder.layer1.0`."""
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\['([^']+)'\]", r".\1", path)
    return path.strip(".")


# --- trace paths -------------------------------------------------------------------------------


def _trace_export(model: nn.Module, x: torch.Tensor, convs: dict[str, nn.Conv2d]
                  ) -> tuple[list[_Call], tuple[int, ...] | None, str]:
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
    calls: list[_Call] = []
    out_shape = None
    for node in ep.graph_module.graph.nodes:
        if node.op == "output":
            vals = [a.meta.get("val") for a in node.args[0] if hasattr(a, "meta")] if isinstance(
                node.args[0], (list, tuple)) else []
            out_shape = next((_shape(v) for v in vals if isinstance(v, torch.Tensor)), None)
            continue
        if node.op != "call_function" or node.target not in targets:
            continue
        name = None
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path = _clean_path(list(stack.values())[-1][0])
            name = alias.get(path)
        if name is None:
            weight = node.args[1]
            fqn = param_of.get(getattr(weight, "name", ""), "")
            name = by_weight.get(fqn)
        if name is None:
            continue  # a functional conv with no nn.Conv2d behind it: not a site
        calls.append(_Call(name, _shape(node.args[0].meta["val"]), _shape(node.meta["val"])))
    return calls, out_shape, ""


def _timm_leaves() -> tuple[tuple[type, ...], tuple[Any, ...]]:
    try:
        from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    except ImportError:  # pragma: no cover
        return (), ()
    return tuple(get_notrace_modules()), tuple(get_notrace_functions())


def _record_calls(convs: dict[str, nn.Conv2d], calls: list[_Call]) -> list[Any]:
    handles = []
    for name, conv in convs.items():
        def hook(mod: nn.Module, args: tuple, out: Any, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                calls.append(_Call(name, _shape(args[0]), _shape(out)))
        handles.append(conv.register_forward_hook(hook))
    return handles


def _trace_fx(model: nn.Module, x: torch.Tensor, convs: dict[str, nn.Conv2d]
              ) -> tuple[list[_Call], tuple[int, ...] | None, str]:
    from torch import fx
    from torch.fx.passes.shape_prop import ShapeProp

    graph, root, how = _fx_graph(model, x)
    gm = fx.GraphModule(root, graph)
    # Convs the graph calls directly are call_module nodes; convs hidden inside leaf modules
    # are caught by hooks while shapes propagate.
    direct = {n.target for n in graph.nodes if n.op == "call_module" and n.target in convs}
    hooked: list[_Call] = []
    handles = _record_calls({n: c for n, c in convs.items() if n not in direct}, hooked)
    try:
        # ShapeProp prints a traceback of its own when a node fails: the failure is reported
        # (and the next path tried) by the caller, so keep the terminal clean.
        with _fake_mode(), contextlib.redirect_stderr(io.StringIO()):
            out = ShapeProp(gm).propagate(x)
    finally:
        for h in handles:
            h.remove()
    calls: list[_Call] = []
    order = {id(c): i for i, c in enumerate(hooked)}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in direct:
            arg = node.args[0]
            calls.append(_Call(node.target, tuple(arg.meta["tensor_meta"].shape),
                               tuple(node.meta["tensor_meta"].shape)))
    calls.extend(sorted(hooked, key=lambda c: order[id(c)]))
    t = first_tensor(out)
    return calls, (_shape(t) if t is not None else None), how


def _fx_graph(model: nn.Module, x: torch.Tensor) -> tuple[Any, nn.Module, str]:
    """Plain symbolic tracing (timm's leaf modules and functions kept whole); if the forward
    branches on shapes, fx's MetaTracer, whose proxies carry meta tensors so `x.shape` is
    concrete. Returns (graph, root, note)."""
    import inspect

    from torch import fx
    from torch.fx.experimental.meta_tracer import MetaProxy, MetaTracer

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
            with _fake_mode() as mode:
                graph = meta.trace(model, meta_args={params[0]: mode.from_tensor(x)})
        except Exception:  # noqa: BLE001
            raise plain from None
        why = one_line(plain, with_type=True, limit=300)
        return graph, meta.root, f"fx: plain symbolic_trace failed ({why}); " \
                                 "traced with fx's MetaTracer (concrete shapes)"


def _trace_hooks(model: nn.Module, x: torch.Tensor, convs: dict[str, nn.Conv2d], *, fake: bool
                 ) -> tuple[list[_Call], tuple[int, ...] | None, str]:
    calls: list[_Call] = []
    handles = _record_calls(convs, calls)
    try:
        with torch.no_grad():
            if fake:
                with _fake_mode():
                    out = model(x)
            else:
                out = model(x)
    finally:
        for h in handles:
            h.remove()
    t = first_tensor(out)
    return calls, (_shape(t) if t is not None else None), ""


def trace_convs(model: nn.Module, input_size: Sequence[int], *, trace: str = "auto", batch: int = 1
                ) -> tuple[list[_Call], str, list[str], tuple[int, ...] | None]:
    """Every nn.Conv2d call at the reference input: (calls, path used, notes, output shape)."""
    if trace not in ("auto", *TRACE_PATHS):
        raise CubesearchError(f"unknown trace path {trace!r} (choose auto, {', '.join(TRACE_PATHS)})")
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    x = torch.zeros(batch, *input_size, device=model_device(model), dtype=model_dtype(model))
    notes: list[str] = []
    attempts: list[tuple[str, Any]] = []
    if trace in ("auto", "export"):
        attempts.append(("export", lambda: _trace_export(model, x, convs)))
    if trace in ("auto", "fx"):
        attempts.append(("fx", lambda: _trace_fx(model, x, convs)))
    if trace in ("auto", "hooks"):
        attempts.append(("hooks", lambda: _trace_hooks(model, x, convs, fake=True)))
        attempts.append(("hooks", lambda: _trace_hooks(model, x, convs, fake=False)))
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
    x = torch.zeros(batch, *input_size, device=model_device(model), dtype=model_dtype(model))

    def run(fake: bool) -> None:
        for v in shapes.values():
            v.clear()
        handles = []
        for n in names:
            def hook(mod: nn.Module, args: tuple, out: Any, n: str = n) -> None:
                t = out if isinstance(out, torch.Tensor) else None
                shapes[n].append(_shape(t) if t is not None else ())
            handles.append(modules[n].register_forward_hook(hook))
        try:
            with torch.no_grad():
                if fake:
                    with _fake_mode():
                        model(x)
                else:
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


def close_names(name: str, names: Sequence[str], n: int = 3) -> str:
    import difflib

    hits = difflib.get_close_matches(name, list(names), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(hits)}?)" if hits else ""


# --- the report --------------------------------------------------------------------------------


def conv_macs(conv: nn.Conv2d, out_shape: Sequence[int]) -> int:
    """fvcore's count for one conv call: N·C_out·(C_in/groups)·kh·kw·H_out·W_out (no bias)."""
    n, _, h, w = out_shape
    kh, kw = _pair(conv.kernel_size)
    return int(n) * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw * int(h) * int(w)


def prediction_conv(calls: Sequence[_Call], out_shape: Sequence[int] | None) -> str | None:
    """The conv that computes a dense prediction's logits: the last conv called, when its output
    has the model output's channels and the output is a feature map (B, K, H, W)."""
    if not calls or out_shape is None or len(out_shape) != 4:
        return None
    last = calls[-1]
    if len(last.out_shape) == 4 and last.out_shape[1] == out_shape[1]:
        return last.name
    return None


def find_sites(model: nn.Module, input_size: Sequence[int] | str = (3, 512, 512), *,
               depthwise: bool = False, strided: bool = False, trace: str = "auto",
               flops: bool = True, insertions: Iterable[str] = (), name: str | None = None
               ) -> SiteReport:
    """Trace `model` at `input_size` (C, H, W) and report its eligible 3×3 convs.

    `flops=True` also counts the model's FLOPs with fvcore (eval mode, batch 1), which the cost
    model needs as its base. `insertions` names modules whose output shapes to record, for
    insertion points. The model is left as it was (mode and weights).
    """
    from cubesearch.models import is_smp_model

    size = parse_input_size(input_size)
    t0 = time.perf_counter()
    calls, path, notes, out_shape = trace_convs(model, size, trace=trace)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    smp = is_smp_model(model)
    grouped: dict[str, list[_Call]] = {}
    for call in calls:
        grouped.setdefault(call.name, []).append(call)
    sites: list[Site] = []
    skipped: dict[str, str] = {}
    total = 0
    for conv_name, conv_calls in grouped.items():
        conv = convs[conv_name]
        macs = sum(conv_macs(conv, c.out_shape) for c in conv_calls)
        total += macs
        reason = conv_eligibility(conv, depthwise=depthwise, strided=strided)
        if reason is None and any(len(c.in_shape) != 4 for c in conv_calls):
            reason = "unbatched input"
        if reason is not None:
            skipped[conv_name] = reason
            continue
        first = conv_calls[0]
        sites.append(Site(
            name=conv_name, in_channels=conv.in_channels, out_channels=conv.out_channels,
            kernel=_pair(conv.kernel_size), stride=_pair(conv.stride)[0], groups=conv.groups,
            dilation=_pair(conv.dilation), padding=(1, 1), bias=conv.bias is not None,
            input_hw=(first.in_shape[2], first.in_shape[3]),
            output_hw=(first.out_shape[2], first.out_shape[3]), calls=len(conv_calls),
            call_shapes=tuple((c.in_shape[2], c.in_shape[3]) for c in conv_calls), macs=macs,
            params=sum(p.numel() for p in conv.parameters(recurse=False)),
            role=role_of(conv_name, smp=smp)))
    prediction = prediction_conv(calls, out_shape)
    sites = [replace(s, prediction=True) if s.name == prediction else s for s in sites]
    uncalled = [n for n in convs if n not in grouped]
    seconds = time.perf_counter() - t0
    base_flops = None
    t1 = time.perf_counter()
    if flops:
        from cubesearch.cost import reference_flops_by_module

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
        base_params=sum(p.numel() for p in model.parameters()), conv_macs=total,
        seconds=seconds, flops_seconds=time.perf_counter() - t1, depthwise=depthwise,
        strided=strided, smp=smp,
        uncalled=uncalled, output_shapes=output_shapes,
        output_shape=out_shape)
