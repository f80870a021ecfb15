"""`cubesearch.search`: Optuna multi-objective search of IoU (up) against the costs (down).

The package is also the entry point: `cubesearch.search(model, budget, ...)` calls `search`.
Its modules, in the order a search meets them (docs/design.md):

- `settings`: `SearchSettings`, everything the command line says, as validated data.
- `context`: `SearchContext` (sites, cost model, budget, datasets, baseline: what every trial
  shares), the `Evaluator` protocol and the `TrialInfo` an evaluator is given.
- `limits`: the budget and, when latency counts, this device's latency model.
- `objectives`: IoU and the table of cost objectives (estimated from a plan, measured on a model).
- `evaluators`: "finetune" (cubesearch's trainer) and the user's own function.
- `record`: storage, `TrialOutcome` (a trial's user attributes), `TrialCounts`, `study_points`.
- `study`, `trial`: the Optuna study; one trial (price → evaluate → record) for every backend.
- `local`, `ray`: the backends (who schedules trials; `cluster`: connecting to Ray);
  `strategy`, `halving`: which phases a search runs; `driver`: set-up → run → wrap-up.
- `progress`, `result`: what a running search shows, and what it leaves.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from cubesearch.search.context import (
    Evaluator,
    SearchContext,
    TrialInfo,
    build_context,
    ensure_baseline,
    ensure_datasets,
)
from cubesearch.search.driver import BACKENDS, search
from cubesearch.search.evaluators import (
    EVALUATORS,
    FineTuneEvaluator,
    UserEvaluator,
    evaluate_plan,
)
from cubesearch.search.objectives import COST_OBJECTIVES, CostObjective, parse_objectives, plan_cost
from cubesearch.search.progress import SearchProgress, front_table
from cubesearch.search.record import (
    MAX_REJECTIONS_PER_TRIAL,
    TrialCounts,
    TrialOutcome,
    open_storage,
    study_points,
)
from cubesearch.search.result import SearchResult
from cubesearch.search.settings import SAMPLERS, SearchSettings
from cubesearch.search.study import open_study

__all__ = ["BACKENDS", "COST_OBJECTIVES", "EVALUATORS", "MAX_REJECTIONS_PER_TRIAL", "SAMPLERS",
           "CostObjective", "Evaluator", "FineTuneEvaluator", "SearchContext", "SearchProgress",
           "SearchResult", "SearchSettings", "TrialCounts", "TrialInfo", "TrialOutcome",
           "UserEvaluator", "build_context", "ensure_baseline", "ensure_datasets", "evaluate_plan",
           "front_table", "open_storage", "open_study", "parse_objectives", "plan_cost", "search",
           "study_points"]


class _SearchModule(types.ModuleType):
    """This package, callable as `search` (`cubesearch.search(...)` is the public entry point)."""

    def __call__(self, *args: Any, **kwargs: Any) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _SearchModule
