"""Evaluators: how a plan becomes an IoU (the `Evaluator` protocol is in `context`).

- `FineTuneEvaluator` ("finetune", the default): convert, warm-start from the trained baseline,
  distil the blocks, fine-tune with cubesearch's trainer, evaluate (`evaluate_plan`).
- `UserEvaluator`: the user's own training code, `fn(model, trial) -> {"iou": ..., ...}`, given
  as `path/to/eval.py:fn` (`--evaluator`) or as a callable (`search(..., evaluator=fn)`). `fn`
  gets the converted model, warm-started and its blocks distilled as for "finetune", and a
  `TrialInfo`; it trains the model in place (or not) and returns its figures. cubesearch then
  measures the costs, saves the checkpoint and records the figures; if `fn` raises, or returns
  no finite `iou`, the trial fails with that reason.

`EVALUATORS` maps a name to its class; anything else containing `:` is a user function.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cubesearch import training
from cubesearch.checkpoint import load, save
from cubesearch.conversion import convert
from cubesearch.data.transforms import normalization
from cubesearch.errors import CubesearchError
from cubesearch.models import load_model
from cubesearch.search.context import (
    Evaluator,
    SearchContext,
    TrialInfo,
    ensure_baseline,
    ensure_datasets,
)
from cubesearch.search.objectives import measure_costs
from cubesearch.search.record import RECORDED_METRICS, TrialOutcome
from cubesearch.search.settings import DEFAULT_EVALUATOR

__all__ = ["EVALUATORS", "Evaluator", "FineTuneEvaluator", "TrialInfo", "UserEvaluator",
           "evaluate_plan", "make_evaluator", "warm_model"]

UserFunction = Callable[[nn.Module, TrialInfo], dict[str, Any]]


class TrialError(RuntimeError):
    """A trial that failed for a reason worth recording (NaN loss, out of memory…)."""


def prepare_baseline(ctx: SearchContext, *, progress: bool, log: Callable[[str], None]) -> None:
    """The datasets and the trained baseline every trial starts from (both evaluators')."""
    ensure_datasets(ctx)
    ensure_baseline(ctx, progress=progress, log=log)


def finish_trial(ctx: SearchContext, trial: TrialInfo, model: nn.Module, metrics: dict[str, Any],
                 recorded: dict[str, float], started: float) -> TrialOutcome:
    """Measure the evaluated model's costs, save its checkpoint, and make its outcome."""
    costs = measure_costs(ctx, model)
    seconds = time.perf_counter() - started
    metrics = {**metrics, **costs, "trial": trial.number, "seconds": seconds,
               "baseline_iou": trial.baseline_metrics.get("iou"),
               "baseline_gflops": ctx.base_flops / 1e9, "recorded_metrics": sorted(recorded)}
    save(trial.folder, model, trial.plan, metrics)
    return TrialOutcome(iou=float(metrics["iou"]), costs=costs, seconds=seconds,
                        checkpoint=str(trial.folder), metrics=recorded)


# --- fine-tuning with cubesearch's trainer ----------------------------------------------------


def evaluate_plan(ctx: SearchContext, sites_cfg: dict[str, Any], number: int,
                  *, progress: bool = False, start: nn.Module | None = None) -> TrialOutcome:
    """Build, warm-start, train and measure one plan; save its checkpoint. Raises on failure.

    `start`: the plan's converted model with every weight already trained (one-shot: extracted
    from the supernet); it is fine-tuned as it is, at the warm-started weights' rate, without
    the baseline warm start and the blocks' distillation."""
    s = ctx.settings
    t0 = time.perf_counter()
    trial = ctx.trial_info(number, sites_cfg, progress=progress)
    plan = trial.plan
    model = start if start is not None else fresh_model(ctx, trial)
    warm = ctx.baseline_dir is not None and start is None
    distill = s.distill_steps if warm and (plan.sites or plan.insertions) else 0
    result = training.train(
        model, config=s.training, data=ctx.datasets, epochs=s.epochs_per_trial, plan=plan,
        input_size=(s.input_size[0], s.tile_size, s.tile_size), seed=trial.seed,
        lr=s.fine_tune_lr(warm or start is not None), new_lr=s.lr if warm else None,
        init_from=ctx.baseline_dir if warm else None, progress=progress, distill_steps=distill)
    metrics = dict(result.metrics)
    if not all(math.isfinite(float(metrics.get(k, 0.0))) for k in ("loss", "iou")):
        raise TrialError(f"non-finite training result (loss={metrics.get('loss')})")
    recorded = {k: float(metrics[k]) for k in RECORDED_METRICS if k in metrics}
    return finish_trial(ctx, trial, result.model.eval(), metrics, recorded, t0)


@dataclass
class FineTuneEvaluator:
    """Fine-tune each plan from the trained baseline with cubesearch's trainer."""

    name: str = DEFAULT_EVALUATOR

    def prepare(self, ctx: SearchContext, *, progress: bool, log: Callable[[str], None]) -> None:
        prepare_baseline(ctx, progress=progress, log=log)

    def evaluate(self, ctx: SearchContext, trial: TrialInfo) -> TrialOutcome:
        # looked up at call time, so that tests can wrap `evaluate_plan`
        return evaluate_plan(ctx, dict(trial.plan.sites), trial.number, progress=trial.progress)


# --- the user's own training code -------------------------------------------------------------


def fresh_model(ctx: SearchContext, trial: TrialInfo) -> nn.Module:
    """The plan's converted model, its blocks' initial weights seeded by the trial (not by
    whatever ran before in the process)."""
    s = ctx.settings
    with torch.random.fork_rng():
        torch.manual_seed(trial.seed)
        return convert(load_model(s.model, num_classes=s.num_classes, in_channels=s.input_size[0]),
                       trial.plan)


def warm_model(ctx: SearchContext, trial: TrialInfo) -> nn.Module:
    """The plan's converted model as "finetune" starts it: the blocks seeded by the trial, every
    other weight from the trained baseline, each block distilled from the conv it replaces."""
    s = ctx.settings
    model = fresh_model(ctx, trial)
    if trial.baseline_dir is None:
        return model
    training.load_init(model, trial.baseline_dir)
    sites, inserted = list(trial.plan.sites), list(trial.plan.insertions)
    if s.distill_steps and (sites or inserted) and trial.datasets is not None:
        batches = _input_batches(trial.datasets[0], s.batch_size, s.input_size[0], trial.seed)
        training.distill(model, load(trial.baseline_dir), sites, batches, s.distill_steps,
                         insertions=inserted, device=torch.device("cpu"))
    return model


def _input_batches(dataset: Dataset, batch_size: int, channels: int, seed: int) -> Callable[[], torch.Tensor]:
    """Normalised input batches of `dataset`, shuffled, for ever (as the trainer feeds them)."""
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in normalization(channels))
    gen = torch.Generator().manual_seed(seed)

    def stream():
        while True:
            yield from DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True,
                                  drop_last=True, generator=gen)

    it = stream()

    def next_batch() -> torch.Tensor:
        x = next(it)[0]
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        return (x - mean) / std

    return next_batch


def load_user_function(spec: str) -> UserFunction:
    """`path/to/eval.py:fn` → fn. The file is the one the user named, and only it is run: it is
    loaded under a private module name, its folder is not put on `sys.path`."""
    path_text, sep, name = spec.rpartition(":")
    path = Path(path_text)
    if not sep or not name.isidentifier() or path.suffix != ".py":
        raise CubesearchError(f"evaluator {spec!r}: give a file and a function, path/to/eval.py:fn")
    if not path.is_file():
        raise CubesearchError(f"evaluator {spec!r}: no such file {path}")
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"cubesearch_user_evaluator_{key}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        assert loader_spec is not None and loader_spec.loader is not None
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module  # pickling its functions (Ray) finds them by this name
        try:
            loader_spec.loader.exec_module(module)
        except Exception:
            del sys.modules[module_name]
            raise
    fn = getattr(module, name, None)
    if not callable(fn):
        raise CubesearchError(f"evaluator {spec!r}: {path} has no function {name!r}")
    return fn


def _checked_figures(returned: Any) -> tuple[float, dict[str, float]]:
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


EVALUATORS: dict[str, Callable[[], Evaluator]] = {DEFAULT_EVALUATOR: FineTuneEvaluator}


def _supernet_evaluator() -> Evaluator:
    """The "supernet" evaluator: plans scored in a supernet trained once per search."""
    from cubesearch.supernet.evaluator import SupernetEvaluator

    return SupernetEvaluator()


EVALUATORS["supernet"] = _supernet_evaluator


def callable_name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"


def make_evaluator(name: str, fn: UserFunction | Evaluator | None = None) -> Evaluator:
    """The evaluator `name` (a table entry or `path.py:fn`), or the one given in Python: an
    `Evaluator` object, or a user function (then `name` is its record in the settings)."""
    if fn is not None:
        if hasattr(fn, "evaluate") and hasattr(fn, "prepare"):
            return fn  # type: ignore[return-value]
        return UserEvaluator(name, fn)  # type: ignore[arg-type]
    if name in EVALUATORS:
        return EVALUATORS[name]()
    if ":" in name:
        return UserEvaluator(name)
    raise CubesearchError(f"unknown evaluator {name!r} (choose from {', '.join(EVALUATORS)}, "
                          "or give path/to/eval.py:fn)")
