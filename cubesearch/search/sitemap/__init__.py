"""`cubesearch.site_map`: where a Cube block pays, measured one site at a time.

For every searchable site and every option the space offers there (keep the conv, or a Cube
config), the option is put alone into the search's trained baseline, fitted by blockwise
distillation, and the model's validation IoU measured: one cell of the map. A plan's predicted
IoU is the baseline's plus its cells' ΔIoU, and the plan of highest prediction under FLOPs,
parameter and latency budgets is a multiple-choice knapsack, solved exactly by integer
programming. Its modules, in the order a map is built:

- `options`: the options at a site (and the one-knob subset a large space is scored on);
- `cells`: one cell measured; `runner`: the cells measured here or as Ray tasks;
- `store`: `OUT/map.json`, written after every cell (a killed map resumes where it stopped);
- `plot`: `OUT/map.png`, the heat map; `build`: `site_map`, the whole map;
- `milp`: plans from the map (`choose`, `sweep`: the predicted front);
- `strategy`: `search --strategy map`, the finalists trained by the final recipe.
"""

from __future__ import annotations

from cubesearch.search.sitemap.build import SiteMap, build_map, predicted_front, site_map
from cubesearch.search.sitemap.milp import Choice, MapTable, choose, resolve_limits, spread, sweep
from cubesearch.search.sitemap.options import KEEP, SiteOption, site_options, subset_rule
from cubesearch.search.sitemap.store import MAP_FILE, MapStore

__all__ = ["KEEP", "MAP_FILE", "Choice", "MapStore", "MapTable", "SiteMap", "SiteOption", "build_map",
           "choose", "predicted_front", "resolve_limits", "site_map", "site_options", "spread",
           "subset_rule", "sweep"]
