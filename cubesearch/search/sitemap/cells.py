"""One cell of the map: one option at one site, alone in the trained baseline.

The model is the search's trained baseline with that site alone replaced, warm-started and
distilled exactly as a search trial starts (`warm_start`: the block seeded by the map's seed,
every other weight from the baseline, the block fitted to the conv it replaces by blockwise
distillation for `distill_steps` batches, its BatchNorm statistics re-estimated). No end-to-end
training follows: the cell is the parent model's validation IoU with that one block in it
("single block replacement validation", as LANA and Puzzle score their candidates). Every cell
uses the same seed, so every block sees the same distillation batches: differences between cells
are the options', not the sampling's.

A width cell narrows the site's conv to a kept fraction of its output channels
(`cubesearch.plan.width`: the largest-L1 filters of the trained conv kept, everything coupled cut by
Torch-Pruning) and measures the model as it is: no distillation (nothing new to fit, the kept
filters are the trained ones) and no re-estimation of BatchNorm statistics.

Costs are exact: a Cube cell's Δ is the cost model's (equal to fvcore's count of the built
model) and, with a latency table, the table's Δ (plain sum, microseconds → ms); a width cell's
is counted on the built model (`plan_flops_params`), and the latency table has none.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from cubesearch import training
from cubesearch.core.errors import CubesearchError
from cubesearch.cost.pricing import plan_flops_params
from cubesearch.models.load import load_model
from cubesearch.plan.checkpoint import load
from cubesearch.search.context import SearchContext
from cubesearch.search.evaluators.finetune import warm_start
from cubesearch.search.sitemap.options import SiteOption


@dataclass(frozen=True)
class CellJob:
    """What a worker needs to measure one cell (picklable: Ray ships it)."""

    site: str
    option: SiteOption

    @property
    def key(self) -> tuple[str, str]:
        return (self.site, self.option.name)


def validation_iou(ctx: SearchContext, model: torch.nn.Module) -> float:
    """The model's IoU on the search's validation tiles (the trainer's evaluation)."""
    assert ctx.datasets is not None, "the map's set-up builds the datasets"
    s = ctx.settings
    metrics = training.evaluate(model, ctx.datasets[1], batch_size=s.batch_size,
                                num_classes=s.num_classes, loss=s.training.loss)
    return float(metrics["iou"])


def baseline_iou(ctx: SearchContext) -> float:
    """The trained baseline's IoU, measured as every cell is (so `keep` is exactly 0)."""
    if ctx.baseline_dir is None:
        raise CubesearchError("the map needs the search's trained baseline")
    with torch.no_grad():
        return validation_iou(ctx, load(ctx.baseline_dir))


def cell_costs(ctx: SearchContext, job: CellJob) -> dict[str, float | None]:
    """ΔGFLOPs, Δparams (cost model) and Δms (latency table, if any) of the option at the site."""
    cfg = job.option.config
    if job.option.width is not None:
        flops, params = narrowed_cost(ctx, {job.site: job.option.width})
        return {"delta_gflops": (flops - ctx.base_flops) / 1e9,
                "delta_params": int(params - ctx.base_params), "delta_ms": None}
    if cfg is None:
        return {"delta_gflops": 0.0, "delta_params": 0, "delta_ms": 0.0 if ctx.latency else None}
    flops, params = ctx.cost.site_delta(job.site, cfg)
    ms = ctx.latency.site_delta_us(job.site, cfg) / 1e3 if ctx.latency is not None else None
    return {"delta_gflops": flops / 1e9, "delta_params": int(params), "delta_ms": ms}


def narrowed_cost(ctx: SearchContext, widths: dict[str, float],
                  sites: dict[str, Any] | None = None) -> tuple[int, int]:
    """(FLOPs, params) of the model with `widths` (and Cube `sites`), counted on the built model."""
    s = ctx.settings
    plan = ctx.plan_for(sites or {}).model_copy(update={"widths": dict(widths)})
    return plan_flops_params(lambda: load_model(s.model, **s.model_args).eval(), plan)


def measure_cell(ctx: SearchContext, job: CellJob, base_iou: float, seed: int | None = None
                 ) -> dict[str, Any]:
    """The cell's record: ΔIoU against `base_iou`, the distillation loss, Δcosts, seconds.
    `seed` (default: the search's): the block's initial weights and the distillation batches."""
    t0 = time.perf_counter()
    record: dict[str, Any] = {"site": job.site, **job.option.to_dict(), **cell_costs(ctx, job)}
    if job.option.kind == "keep":  # the baseline itself
        return {**record, "iou": base_iou, "delta_iou": 0.0, "distill_loss": 0.0,
                "distill_loss_start": 0.0, "seconds": 0.0}
    trial = ctx.trial_info(0, {job.site: job.option.config} if job.option.config else {})
    trial = dataclasses.replace(trial, seed=ctx.settings.seed if seed is None else seed)
    if job.option.width is not None:
        plan = trial.plan.model_copy(update={"widths": {job.site: job.option.width}})
        trial = dataclasses.replace(trial, plan=plan)
    model, distilled = warm_start(ctx, trial)
    iou = validation_iou(ctx, model)
    loss = float(distilled.get("loss_end", math.nan))
    return {**record, "iou": iou, "delta_iou": iou - base_iou, "distill_loss": loss,
            "distill_loss_start": float(distilled.get("loss_start", math.nan)),
            "seconds": time.perf_counter() - t0}
