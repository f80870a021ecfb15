"""The "finetune" evaluator (the default): convert, warm-start from the trained baseline, distil
the blocks, fine-tune with cubesearch's trainer, evaluate (`evaluate_plan`).

The helpers every evaluator that builds a model shares are here too: the plan's freshly seeded
model (`fresh_model`), the same warm-started as "finetune" starts it (`warm_model`), and the
end of a trial (`finish_trial`: measured costs, checkpoint, outcome).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cubesearch import training
from cubesearch.blocks import CubeConfig
from cubesearch.models.load import load_model
from cubesearch.plan.checkpoint import load, save
from cubesearch.plan.conversion import convert
from cubesearch.search.context import SearchContext, TrialInfo, ensure_baseline, ensure_datasets
from cubesearch.search.objectives import measure_costs
from cubesearch.search.record import RECORDED_METRICS, TrialOutcome
from cubesearch.search.settings import DEFAULT_EVALUATOR
from cubesearch.training.inputs import normalised

__all__ = ["FineTuneEvaluator", "TrialError", "evaluate_plan", "fresh_model", "warm_model", "warm_start"]


class TrialError(RuntimeError):
    """A trial that failed for a reason worth recording (NaN loss, out of memory…)."""


def prepare_baseline(ctx: SearchContext, *, progress: bool, log: Callable[[str], None]) -> None:
    """The datasets and the trained baseline every trial starts from."""
    ensure_datasets(ctx)
    ensure_baseline(ctx, progress=progress, log=log)


def finish_trial(ctx: SearchContext, trial: TrialInfo, model: nn.Module, metrics: dict[str, Any],
                 recorded: dict[str, float], started: float) -> TrialOutcome:
    """Measure the evaluated model's costs, save its checkpoint, and make its outcome."""
    costs = measure_costs(ctx, model)
    seconds = time.perf_counter() - started
    if ctx.latency is not None and "latency" in costs:  # measured beside predicted, in the card
        metrics = {**metrics, "latency_predicted": ctx.latency.latency_ms(trial.plan.sites),
                   "latency_backend": ctx.latency.fingerprint.backend}
    metrics = {**metrics, **costs, "trial": trial.number, "seconds": seconds,
               "baseline_iou": trial.baseline_metrics.get("iou"),
               "baseline_gflops": ctx.base_flops / 1e9, "recorded_metrics": sorted(recorded)}
    save(trial.folder, model, trial.plan, metrics)
    return TrialOutcome(iou=float(metrics["iou"]), costs=costs, seconds=seconds,
                        checkpoint=str(trial.folder), metrics=recorded)


def evaluate_plan(ctx: SearchContext, sites_cfg: dict[str, CubeConfig], number: int,
                  *, progress: bool = False) -> TrialOutcome:
    """Build, warm-start, train and measure one plan; save its checkpoint. Raises on failure."""
    s = ctx.settings
    t0 = time.perf_counter()
    trial = ctx.trial_info(number, sites_cfg, progress=progress)
    plan = trial.plan
    model = fresh_model(ctx, trial)
    warm = ctx.baseline_dir is not None
    distill = s.distill_steps if warm and (plan.sites or plan.insertions) else 0
    result = training.train(
        model, config=s.training, data=ctx.datasets, epochs=s.epochs_per_trial, plan=plan,
        input_size=(s.input_size[0], s.tile_size, s.tile_size), seed=trial.seed,
        lr=s.fine_tune_lr(warm), new_lr=s.lr if warm else None,
        init_from=ctx.baseline_dir if warm else None, progress=progress, distill_steps=distill,
        callbacks=ctx.deadline_callbacks())
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


def fresh_model(ctx: SearchContext, trial: TrialInfo) -> nn.Module:
    """The plan's converted model, its blocks' initial weights seeded by the trial (not by
    whatever ran before in the process)."""
    s = ctx.settings
    with torch.random.fork_rng():
        torch.manual_seed(trial.seed)
        return convert(load_model(s.model, **s.model_args), trial.plan)


def warm_model(ctx: SearchContext, trial: TrialInfo) -> nn.Module:
    """The plan's converted model as "finetune" starts it: the blocks seeded by the trial, every
    other weight from the trained baseline (narrowed by the plan's widths, if any), each block
    distilled from the conv it replaces."""
    return warm_start(ctx, trial)[0]


def warm_start(ctx: SearchContext, trial: TrialInfo) -> tuple[nn.Module, dict[str, Any]]:
    """`warm_model`, with what its distillation reported (`training.distill`'s figures:
    `loss_start`, `loss_end`, `block_loss`; empty when nothing was distilled)."""
    s = ctx.settings
    model = fresh_model(ctx, trial)
    if trial.baseline_dir is None:
        return model, {}
    source = training.warm_source(trial.baseline_dir, trial.plan)  # narrowed, for widths
    training.load_init(model, source)
    sites, inserted = list(trial.plan.sites), list(trial.plan.insertions)
    if s.distill_steps and (sites or inserted) and trial.datasets is not None:
        batches = _input_batches(trial.datasets[0], s.batch_size, s.input_size[0], trial.seed)
        teacher = source if isinstance(source, nn.Module) else load(trial.baseline_dir)
        return model, training.distill(model, teacher, sites, batches, s.distill_steps,
                                       insertions=inserted, device=torch.device("cpu"))
    return model, {}


def _input_batches(dataset: Dataset, batch_size: int, channels: int, seed: int) -> Callable[[], torch.Tensor]:
    """Normalised input batches of `dataset`, shuffled, for ever (as the trainer feeds them)."""
    gen = torch.Generator().manual_seed(seed)

    def stream() -> Iterator[Any]:
        while True:
            yield from DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True,
                                  drop_last=True, generator=gen)

    it = stream()

    def next_batch() -> torch.Tensor:
        return normalised(next(it)[0], channels)

    return next_batch
