"""cubesearch: put Cube Kernel blocks into any model and search the IoU-vs-FLOPs trade-off.

The public API mirrors the CLI (docs/design.md §3). Heavy modules (timm, smp, fvcore, optuna) load
lazily, on first use of the name that needs them (torch too: the blocks), so `import cubesearch`
and `cubesearch --help` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from cubesearch._version import __version__
from cubesearch.errors import CubesearchError

# name -> module that defines it; one module per step of docs/design.md §2's data flow.
_LAZY = {
    "CubeBlock": "cubesearch.blocks",
    "CubeConfig": "cubesearch.blocks",
    "FoldedCubeBlock": "cubesearch.blocks",
    "load_model": "cubesearch.models",
    "find_sites": "cubesearch.sites",
    "Site": "cubesearch.sites",
    "Plan": "cubesearch.plan",
    "convert": "cubesearch.conversion",
    "count_flops": "cubesearch.cost",
    "CostModel": "cubesearch.cost",
    "LatencyModel": "cubesearch.latency",
    "load": "cubesearch.checkpoint",
    "save": "cubesearch.checkpoint",
    "train": "cubesearch.training",
    "TrainConfig": "cubesearch.training",
    "convert_spec": "cubesearch.conversion_report",
    "ConvertReport": "cubesearch.conversion_report",
    "search": "cubesearch.search",  # the package, callable as its `search`
    "site_map": "cubesearch.sitemap",
    "export": "cubesearch.exporting",
    "ablate": "cubesearch.ablation",
    "AblationResult": "cubesearch.ablation",
}

__all__ = ["CubesearchError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cubesearch' has no attribute {name!r}")
