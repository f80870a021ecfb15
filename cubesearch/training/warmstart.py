"""Warm start: copy into a model every tensor of a checkpoint whose name and shape match, and
rebuild the unconverted teacher that distillation needs. For a plan with widths the source is
the trained baseline narrowed by the plan (`warm_source`), so the narrowed convs start from the
baseline's own largest-L1 filters and each block is distilled from the narrowed conv's input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cubesearch.core.errors import CubesearchError, one_line
from cubesearch.models.load import load_model_from
from cubesearch.plan.checkpoint import load
from cubesearch.plan.plan import Plan
from cubesearch.plan.width import narrowed_like


def _read_weights(path: Path) -> Any:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader error is the user's file
        raise CubesearchError(f"--init {path}: cannot read weights ({one_line(exc)})") from None


def state_dict_of(source: Any) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict from a checkpoint folder, a .safetensors / .pt file, a dict or a module."""
    if isinstance(source, nn.Module):
        return source.state_dict(), type(source).__name__
    if isinstance(source, dict):
        return source, "state dict"
    path = Path(source)
    if path.is_dir():
        file = path / "model.safetensors"
        if not file.exists():
            raise CubesearchError(f"--init {path}: no model.safetensors in the folder")
        path = file
    if not path.exists():
        raise CubesearchError(f"--init {path}: no such file or folder")
    state = _read_weights(path)
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise CubesearchError(f"--init {path}: not a state dict")
    return state, str(path)


def load_init(model: nn.Module, source: Any) -> dict[str, Any]:
    """Copy into `model` every tensor of `source` whose name and shape match (strict=False).
    Returns the counts: loaded, total (the model's), missing (no such name: typically the
    replaced convs' new blocks), shape_mismatch, unexpected (in the source only)."""
    state, where = state_dict_of(source)
    own = model.state_dict()
    if not any(k in own for k in state) and any(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel copies
    load_now, mismatch = {}, []
    for key, value in state.items():
        if key in own:
            if tuple(own[key].shape) == tuple(value.shape):
                load_now[key] = value
            else:
                mismatch.append(key)
    if not load_now:
        raise CubesearchError(f"--init {where}: none of its {len(state)} tensors matches the "
                              f"model's names and shapes (another architecture?)")
    model.load_state_dict(load_now, strict=False)
    missing = [k for k in own if k not in load_now]
    return {"source": where, "loaded": len(load_now), "total": len(own), "missing": len(missing),
            "loaded_names": sorted(load_now),
            "shape_mismatch": len(mismatch), "unexpected": len([k for k in state if k not in own]),
            "missing_names": missing[:20], "shape_mismatch_names": mismatch[:20]}


def teacher_for(init_from: Any, plan: Plan | None) -> nn.Module:
    """The unconverted, trained model the blocks are distilled from."""
    if isinstance(init_from, nn.Module):
        return init_from
    if init_from is None:
        raise CubesearchError("--distill-steps needs a trained baseline to distil from (--init DIR)")
    path = Path(init_from) if not isinstance(init_from, dict) else None
    if path is not None and path.is_dir() and (path / "plan.json").exists():
        return load(path)
    if plan is None:
        raise CubesearchError("--distill-steps needs the plan (the model spec) to rebuild the teacher")
    teacher = load_model_from(plan.model, source="the plan", **dict(plan.model_kwargs))
    load_init(teacher, init_from)
    return teacher


def warm_source(source: Any, plan: Plan | None) -> Any:
    """What to warm-start (and distil) a model built from `plan` from: `source` itself, or, when
    the plan narrows convs, the unconverted trained model `source` holds, narrowed by the plan's
    widths (its kept filters are the trained ones)."""
    widths = getattr(plan, "widths", None)
    if source is None or not widths:
        return source
    return narrowed_like(teacher_for(source, plan), widths, plan.input_size)
