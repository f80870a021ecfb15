"""`convert(model, plan)`: a copy of the model with Cube blocks in place of the planned convs.

The rewrite swaps submodules by qualified name, so the user gets back their own module classes
(not a flattened graph): every planned `nn.Conv2d` becomes `CubeBlock(conv.in_channels,
conv.out_channels, cfg, stride=conv.stride[0])` (same output shape), and every insertion point
`M` becomes `CubeInsertion(M, CubeBlock(C, C, cfg))`, computing `y = M(x); y + block(y)`.
`CubeInsertion` keeps `M`'s state-dict keys unchanged, so pretrained / baseline weights load
into the converted model by name. A plan's `widths` are applied first (`cubesearch.plan.width.narrow`:
the named convs lose their smallest-L1 output channels), so a block at a site downstream of a
narrowed conv is built for the conv's narrowed shape, as is a block inserted after a narrowed
module. The input model is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cubesearch.blocks import CubeBlock, CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import close_names, model_device, model_dtype
from cubesearch.plan.plan import Plan
from cubesearch.plan.sites import module_output_shapes, replaceable
from cubesearch.plan.width import narrow

BLOCK_KEY = "cube_block"  # the inserted block's attribute in a CubeInsertion
_INNER = "module"


class CubeInsertion(nn.Module):
    """`y = module(x); return y + block(y)`; state-dict keys of `module` stay as they were."""

    def __init__(self, module: nn.Module, block: CubeBlock) -> None:
        super().__init__()
        self.module = module
        setattr(self, BLOCK_KEY, block)
        self._register_state_dict_hook(_strip_inner)
        self._register_load_state_dict_pre_hook(_add_inner)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self.module(*args, **kwargs)
        return y + getattr(self, BLOCK_KEY)(y)


def _strip_inner(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    inner = prefix + _INNER + "."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)


def _add_inner(state_dict: dict, prefix: str, *args: Any) -> None:
    block = prefix + BLOCK_KEY + "."
    for key in [k for k in state_dict if k.startswith(prefix)]:
        if key.startswith(block) or key.startswith(prefix + _INNER + "."):
            continue
        state_dict[prefix + _INNER + "." + key[len(prefix):]] = state_dict.pop(key)


def _references(root: nn.Module, target: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every (parent, attribute) that holds `target` (a module may be registered twice)."""
    refs = []
    for _, parent in root.named_modules(remove_duplicate=False):
        for key, child in parent._modules.items():
            if child is target:
                refs.append((parent, key))
    return refs


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    old = root.get_submodule(name)
    refs = _references(root, old)
    if not refs:  # pragma: no cover - get_submodule found it, so a parent holds it
        raise CubesearchError(f"cannot replace {name!r}")
    seen = set()
    for parent, key in refs:
        if (id(parent), key) not in seen:
            seen.add((id(parent), key))
            parent._modules[key] = new


def _like(new: nn.Module, old: nn.Module) -> nn.Module:
    """Same device, float dtype and train/eval mode as the module it stands for."""
    return new.to(device=model_device(old), dtype=model_dtype(old)).train(old.training)


def _block_for(name: str, conv: nn.Module, cfg: CubeConfig) -> CubeBlock:
    reason = replaceable(conv)
    if reason is not None:
        raise CubesearchError(f"site {name!r} cannot take a Cube block: {reason}")
    try:
        block = CubeBlock(conv.in_channels, conv.out_channels, cfg, stride=int(conv.stride[0]))
    except ValueError as exc:
        raise CubesearchError(f"site {name!r}: {exc}") from None
    return _like(block, conv)


def _module(root: nn.Module, name: str, modules: Mapping[str, nn.Module], what: str) -> nn.Module:
    if name in modules:
        return modules[name]
    pool = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)] if what == "site" else list(
        modules)
    raise CubesearchError(f"plan names a {what} that does not exist: {name!r}"
                          f"{close_names(name, pool)}")


def convert(model: nn.Module, plan: Plan, *, input_size: Sequence[int] | None = None) -> nn.Module:
    """A new model with `plan`'s blocks in place; `model` itself is left untouched.

    `plan` is a `Plan` (or anything with `sites`, `insertions` and `input_size`; `widths` if
    any). Narrowing (`plan.widths`) traces a real forward, and insertion points read the
    inserted module's output channels from a fake-tensor run, both at `plan.input_size` (or
    `input_size`).
    """
    sites: Mapping[str, CubeConfig] = getattr(plan, "sites", None)
    if sites is None:
        raise CubesearchError(f"convert() needs a Plan, got {type(plan).__name__}")
    inserts: Mapping[str, CubeConfig] = getattr(plan, "insertions", {}) or {}
    modules = dict(model.named_modules())
    # Validate everything first: a bad plan fails before any copy is made.
    for name in sites:
        _module(model, name, modules, "site")
    for name in inserts:
        _module(model, name, modules, "module")
        if name == "":
            raise CubesearchError("cannot insert a block after the whole model (empty name)")
    overlap = set(sites) & set(inserts)
    if overlap:
        raise CubesearchError(f"{sorted(overlap)[0]!r} is both replaced and an insertion point")
    widths: Mapping[str, float] = getattr(plan, "widths", {}) or {}
    both = set(sites) & set(widths)
    if both:
        raise CubesearchError(f"{sorted(both)[0]!r} is both a Cube site and narrowed (widths)")
    size = input_size or getattr(plan, "input_size", None) or (3, 512, 512)
    new = narrow(copy.deepcopy(model), widths, size)
    channels = _insertion_channels(new, inserts, size) if inserts else {}
    new_modules = dict(new.named_modules())
    for name, cfg in sites.items():
        _replace(new, name, _block_for(name, new_modules[name], cfg))
    for name, cfg in inserts.items():
        inner = new_modules[name]
        c = channels[name]
        try:
            block = CubeBlock(c, c, cfg)
        except ValueError as exc:
            raise CubesearchError(f"insertion after {name!r}: {exc}") from None
        _replace(new, name, CubeInsertion(inner, _like(block, inner)).train(inner.training))
    return new


def _insertion_channels(model: nn.Module, inserts: Mapping[str, CubeConfig],
                        size: Sequence[int]) -> dict[str, int]:
    """Each insertion point's output channels, from a fake-tensor run at `size`."""
    channels = {}
    for name, shapes in module_output_shapes(model, inserts, size).items():
        if not shapes:
            raise CubesearchError(f"cannot insert a block after {name!r}: the model's forward "
                                  "never calls it")
        if any(len(s) != 4 for s in shapes):
            raise CubesearchError(
                f"cannot insert a block after {name!r}: its output has shape {shapes[0]}, a "
                "block needs (B, C, H, W)")
        channels[name] = shapes[0][1]
    return channels


def cube_blocks(model: nn.Module) -> dict[str, CubeBlock]:
    """Every CubeBlock in a (converted) model, by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, CubeBlock)}
