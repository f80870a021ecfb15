"""cubesearch: put Cube Kernel blocks into any model and search the IoU-vs-FLOPs trade-off.

The public API mirrors the CLI (docs/design.md §3). Heavy modules (timm, smp, fvcore, optuna) load
lazily, on first use of the name that needs them (torch too: the blocks), so `import cubesearch`
and `cubesearch --help` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from cubesearch.core.errors import CubesearchError
from cubesearch.core.names import install as _install_moved_names
from cubesearch.core.version import __version__

_install_moved_names()  # the module paths of 0.1.0 (`cubesearch.sites`, …) still import

# name -> module that defines it; one module per step of docs/design.md §2's data flow.
_LAZY = {
    "CubeBlock": "cubesearch.blocks",
    "CubeConfig": "cubesearch.blocks",
    "FoldedCubeBlock": "cubesearch.blocks",
    "load_model": "cubesearch.models.load",
    "find_sites": "cubesearch.plan.sites",
    "Site": "cubesearch.plan.sites",
    "Plan": "cubesearch.plan.plan",
    "convert": "cubesearch.plan.conversion",
    "count_flops": "cubesearch.cost.pricing",
    "CostModel": "cubesearch.cost.pricing",
    "LatencyModel": "cubesearch.cost.latency",
    "load": "cubesearch.plan.checkpoint",
    "save": "cubesearch.plan.checkpoint",
    "train": "cubesearch.training",
    "TrainConfig": "cubesearch.training",
    "convert_spec": "cubesearch.cost.report",
    "ConvertReport": "cubesearch.cost.report",
    "search": "cubesearch.search",  # the package, callable as its `search`
    "site_map": "cubesearch.search.sitemap",
    "export": "cubesearch.exporting.export",
    "ablate": "cubesearch.search.ablation",
    "AblationResult": "cubesearch.search.ablation",
}

__all__ = ["CubesearchError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cubesearch' has no attribute {name!r}")
