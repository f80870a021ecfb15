"""The model to train: a module, a model spec, a spec converted by a plan, or a checkpoint
folder (continued as it is, or converted by a plan and warm-started from it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from cubesearch.core.errors import CubesearchError
from cubesearch.models.load import load_model, load_model_from
from cubesearch.plan.checkpoint import load
from cubesearch.plan.conversion import convert
from cubesearch.plan.plan import Plan

Resolved = tuple[nn.Module, Plan | None, Any, int | None]


def as_plan(plan: Plan | dict | str | Path | None) -> Plan | None:
    """A `Plan`, from itself, its dict or its JSON file."""
    if plan is None or isinstance(plan, Plan):
        return plan
    if isinstance(plan, dict):
        return Plan.from_dict(plan)
    return Plan.load(plan)


def _classes(kwargs: Any) -> int | None:
    k = kwargs.get("num_classes")
    return int(k) if k is not None else None


def _from_folder(folder: Path, plan: Plan | None, log: Callable[[str], None]) -> Resolved:
    if not (folder / "plan.json").exists():
        raise CubesearchError(f"{folder} is a folder without plan.json: not a cubesearch checkpoint")
    saved = Plan.load(folder / "plan.json")
    k = _classes(saved.model_kwargs)
    if plan is None:  # continue training a converted / exported / baseline checkpoint
        return load(folder), saved, None, k
    if saved.sites or saved.insertions:
        raise CubesearchError(f"{folder} is already converted; --plan applies to a model spec or "
                              "an unconverted (baseline) checkpoint")
    base = load_model_from(saved.model, source=folder / "plan.json", folder=folder,
                           **dict(saved.model_kwargs))
    log(f"converting {saved.model} with the plan; warm start from {folder}")
    return convert(base, plan), plan, folder, k


def resolve_model(model_or_spec: Any, plan: Any, *, num_classes: int | None,
                  input_size: tuple[int, int, int], pretrained: bool,
                  log: Callable[[str], None]) -> Resolved:
    """(model, plan, default init source, num_classes from the plan/checkpoint)."""
    plan = as_plan(plan)
    if isinstance(model_or_spec, nn.Module):
        return model_or_spec, plan, None, _classes(plan.model_kwargs) if plan else None
    spec = str(model_or_spec)
    if Path(spec).is_dir():
        return _from_folder(Path(spec), plan, log)
    if plan is not None:
        k = int(plan.model_kwargs.get("num_classes", num_classes or 1))
        c = int(plan.model_kwargs.get("in_channels", input_size[0]))
        if plan.model != spec:
            log(f"note: the plan was made for {plan.model!r}; building {spec!r}")
        model = convert(load_model(spec, num_classes=k, in_channels=c, pretrained=pretrained), plan)
        return model, plan, None, k
    k = num_classes or 1
    model = load_model(spec, num_classes=k, in_channels=input_size[0], pretrained=pretrained)
    plan = Plan(model=spec, model_kwargs={"num_classes": k, "in_channels": input_size[0]},
                input_size=tuple(input_size), sites={})
    return model, plan, None, k
