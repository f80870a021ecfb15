"""Evaluators: how a plan becomes an IoU (the `Evaluator` protocol is in `search.context`).

- `finetune`: `FineTuneEvaluator` ("finetune", the default): convert, warm-start from the
  trained baseline, distil the blocks, fine-tune with cubesearch's trainer (`evaluate_plan`).
- `user`: `UserEvaluator`, the user's own `fn(model, trial) -> {"iou": ..., ...}`, given as
  `path/to/eval.py:fn` or as a callable.

`EVALUATORS` maps a name to a factory given the search's settings; anything else containing `:`
is a user function.
"""

from __future__ import annotations

from collections.abc import Callable

from cubesearch.core.errors import CubesearchError
from cubesearch.search.context import Evaluator, TrialInfo
from cubesearch.search.evaluators.finetune import FineTuneEvaluator, TrialError, evaluate_plan, warm_model
from cubesearch.search.evaluators.user import UserEvaluator, UserFunction, load_user_function
from cubesearch.search.settings import DEFAULT_EVALUATOR, RETIRED, SearchSettings

__all__ = ["EVALUATORS", "Evaluator", "FineTuneEvaluator", "TrialError",
           "TrialInfo", "UserEvaluator", "UserFunction", "callable_name", "evaluate_plan",
           "load_user_function", "make_evaluator", "warm_model"]


def _finetune(settings: SearchSettings) -> Evaluator:
    return FineTuneEvaluator()


# name → the evaluator a search with these settings uses
EVALUATORS: dict[str, Callable[[SearchSettings], Evaluator]] = {
    DEFAULT_EVALUATOR: _finetune,
}


def callable_name(fn: Callable[..., object]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"


def make_evaluator(settings: SearchSettings, fn: UserFunction | Evaluator | None = None) -> Evaluator:
    """The evaluator `settings.evaluator` names (a table entry or `path.py:fn`), or the one
    given in Python: an `Evaluator` object, or a user function (then `settings.evaluator` is
    its record)."""
    name = settings.evaluator
    if fn is not None:
        if hasattr(fn, "evaluate") and hasattr(fn, "prepare"):
            return fn  # type: ignore[return-value]
        return UserEvaluator(name, fn)  # type: ignore[arg-type]
    if name in EVALUATORS:
        return EVALUATORS[name](settings)
    if ":" in name:
        return UserEvaluator(name)
    if name in RETIRED:
        raise CubesearchError(f"--evaluator {name}: {RETIRED[name]}")
    raise CubesearchError(f"unknown evaluator {name!r} (choose from {', '.join(EVALUATORS)}, "
                          "or give path/to/eval.py:fn)")
