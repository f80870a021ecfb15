"""`UserEvaluator`: the user's own training code scores each plan.

`fn(model, trial) -> {"iou": ..., ...}`, given as `path/to/eval.py:fn` (`--evaluator`) or as a
callable (`search(..., evaluator=fn)`). `fn` gets the converted model, warm-started and its
blocks distilled as for "finetune", and a `TrialInfo`; it trains the model in place (or not) and
returns its figures. cubesearch then measures the costs, saves the checkpoint and records the
figures; if `fn` raises, or returns no finite `iou`, the trial fails with that reason.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from cubesearch.core.errors import CubesearchError
from cubesearch.models.load import import_file
from cubesearch.search.context import SearchContext, TrialInfo
from cubesearch.search.evaluators.finetune import TrialError, finish_trial, prepare_baseline, warm_model
from cubesearch.search.record import TrialOutcome

__all__ = ["UserEvaluator", "UserFunction", "load_user_function"]

UserFunction = Callable[[nn.Module, TrialInfo], dict[str, Any]]


def load_user_function(spec: str) -> UserFunction:
    """`path/to/eval.py:fn` → fn. The file the user named is imported as a model file is
    (`models.import_file`: a private module name, its folder on `sys.path` while it runs)."""
    path_text, sep, name = spec.rpartition(":")
    path = Path(path_text)
    if not sep or not name.isidentifier() or path.suffix != ".py":
        raise CubesearchError(f"evaluator {spec!r}: give a file and a function, path/to/eval.py:fn")
    if not path.is_file():
        raise CubesearchError(f"evaluator {spec!r}: no such file {path}")
    fn = getattr(import_file(path), name, None)
    if not callable(fn):
        raise CubesearchError(f"evaluator {spec!r}: {path} has no function {name!r}")
    return fn


def _checked_figures(returned: object) -> tuple[float, dict[str, float]]:
    """The IoU and the other numeric figures of what a user evaluator returned."""
    if not isinstance(returned, dict) or "iou" not in returned:
        raise TrialError(f"the evaluator returned {type(returned).__name__} without an 'iou' "
                         "(it must return a dict like {'iou': 0.71, ...})")
    try:
        iou = float(returned["iou"])
    except (TypeError, ValueError):
        raise TrialError(f"the evaluator's iou is not a number: {returned['iou']!r}") from None
    if not math.isfinite(iou):
        raise TrialError(f"the evaluator's iou is not finite: {iou}")
    figures = {k: float(v) for k, v in returned.items() if k != "iou" and isinstance(k, str)
               and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return iou, figures


class UserEvaluator:
    """The user's `fn(model, trial) -> {"iou": ..., ...}` scores each (warm-started) plan."""

    def __init__(self, spec: str, fn: UserFunction | None = None) -> None:
        self.name = spec
        self._fn = fn if fn is not None else load_user_function(spec)
        self._from_file = fn is None

    def __getstate__(self) -> dict[str, Any]:  # a file's function is loaded again where it runs
        return {**self.__dict__, "_fn": None if self._from_file else self._fn}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._fn is None:
            self._fn = load_user_function(self.name)

    def prepare(self, ctx: SearchContext, *, progress: bool, log: Callable[[str], None]) -> None:
        prepare_baseline(ctx, progress=progress, log=log)

    def evaluate(self, ctx: SearchContext, trial: TrialInfo) -> TrialOutcome:
        t0 = time.perf_counter()
        model = warm_model(ctx, trial)
        iou, figures = _checked_figures(self._fn(model, trial))
        return finish_trial(ctx, trial, model.eval(), {**figures, "iou": iou}, figures, t0)
