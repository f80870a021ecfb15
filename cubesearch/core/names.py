"""Where a name lives now: a package hands the names of the module it grew out of through to it
(`cubesearch.cost.CostModel` is `cubesearch.cost.pricing.CostModel`), and the module paths that
moved when the package was regrouped by data-flow step still import, with a DeprecationWarning.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

# The top-level modules of cubesearch 0.1.0 (before the regroup) -> where they live now.
MOVED: dict[str, str] = {
    "_version": "core.version", "errors": "core.errors", "logging": "core.logging",
    "progressbar": "core.progressbar", "helpers": "core.helpers", "redact": "core.redact",
    "resources": "core.resources", "threads": "core.threads",
    "specs": "models.specs", "trust": "models.trust", "flops": "models.flops",
    "space": "plan.space", "spaces": "plan.spaces", "width": "plan.width", "sites": "plan.sites",
    "conversion": "plan.conversion", "checkpoint": "plan.checkpoint",
    "budget": "cost.budget", "conversion_report": "cost.report", "latency": "cost.latency",
    "deploy": "cost.deploy",
    "data": "training.data", "metrics": "training.metrics",
    "pareto": "search.pareto", "sitemap": "search.sitemap", "ablation": "search.ablation",
    "finetuning": "exporting.finetuning", "calibration": "exporting.calibration",
    "demo": "cli.demo",
}


def delegate(module: str) -> Callable[[str], Any]:
    """A package's `__getattr__` that reads the names of `module` (the one it grew out of)."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(importlib.import_module(module), name)

    return __getattr__


def new_name(fullname: str, root: str = "cubesearch") -> str | None:
    """`cubesearch.sites.find` -> `cubesearch.plan.sites.find`; None for a name that did not move."""
    head, _, rest = fullname.removeprefix(f"{root}.").partition(".")
    if not fullname.startswith(f"{root}.") or head not in MOVED:
        return None
    return f"{root}.{MOVED[head]}" + (f".{rest}" if rest else "")


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.target}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:  # the target module is already executed
        pass


class MovedFinder(importlib.abc.MetaPathFinder):
    """Imports an old module path as the module that now holds it (the same module object)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        moved = new_name(fullname)
        return None if moved is None else importlib.util.spec_from_loader(fullname, _Alias(moved))


def install() -> None:
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())  # before an editable install's finder
