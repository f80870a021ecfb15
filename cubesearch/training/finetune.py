"""The final training: what turns a plan found on a cheap proxy into the model the user gets,
and the paired baseline it is judged against.

One recipe (`Recipe`) for `cubesearch finetune`, `export --finetune`, `calibrate` and
`benchmarks/fidelity.py`: from the trained, unconverted baseline (the search trials' start),
the blocks fitted to the convs they replace, then the whole model trained (with logit
distillation from the baseline as teacher if `kd_weight` > 0; off by default), the
warm-started weights at `lr` and the new blocks at `block_lr`, a cosine schedule annealed to 0,
the weights of the best validation IoU kept and early stopping after `patience` evaluations
without improvement.

The **paired baseline** is the unconverted baseline trained by the identical recipe, epochs and
seed: a converted model's ΔIoU is against it, not against the shorter-trained baseline of the
search (which would credit the converted model with the extra epochs).

`Recipe(from_scratch=True)` is the paper's protocol instead (§4.2: both arms trained the same
way, no pretraining): the converted model's weights re-initialised from the seed (nothing
loaded from the baseline, no block distillation), every parameter at `block_lr`, the same
epochs; its paired baseline is then the unconverted model trained from scratch likewise. The
baseline folder still names the model (and is the teacher when `kd_weight` > 0).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import Module

from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import atomic_write, file_sha256
from cubesearch.models.load import load_model_from
from cubesearch.plan.conversion import convert
from cubesearch.plan.plan import Plan
from cubesearch.training.trainer import TrainResult, train

PAIRED_FILE = "paired.json"


class Recipe(BaseModel):
    """How the final models (and their paired baseline) train."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: float = Field(16.0, gt=0)
    lr: float = Field(5e-4, gt=0)  # the warm-started weights (the search trials' rate)
    block_lr: float = Field(2e-3, gt=0)  # the new blocks' own rate
    # logit distillation from the unconverted baseline: off, since with the search's baseline as
    # teacher (the demo's: 12 epochs) it held both the unconverted model (-0.043 IoU) and
    # FullCube (-0.029) below plain training (benchmarks/results/kd-ablation.md)
    kd_weight: float = Field(0.0, ge=0)
    kd_temperature: float = Field(1.0, gt=0)
    patience: int | None = Field(4, ge=1)  # evaluations (epochs) without improvement
    distill_steps: int = Field(100, ge=0)  # blocks fitted to the convs they replace, first
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # annealed to 0
    # the paper's protocol: weights re-initialised, not converted from the trained baseline
    from_scratch: bool = False

    def train_options(self, converted: bool) -> dict[str, Any]:
        """`TrainConfig` fields of this recipe (no block distillation for an unconverted model,
        nor from scratch: there is no trained conv to fit; from scratch every weight is new, so
        all train at `block_lr`)."""
        if self.from_scratch:
            return dict(epochs=self.epochs, lr=self.block_lr, new_lr=None, kd_weight=self.kd_weight,
                        kd_temperature=self.kd_temperature, patience=self.patience, keep_best=True,
                        min_lr_ratio=self.min_lr_ratio, distill_steps=0)
        return dict(epochs=self.epochs, lr=self.lr, new_lr=self.block_lr, kd_weight=self.kd_weight,
                    kd_temperature=self.kd_temperature, patience=self.patience, keep_best=True,
                    min_lr_ratio=self.min_lr_ratio, distill_steps=self.distill_steps if converted else 0)

    def key(self, **data_options: Any) -> str:
        """A short hash of the recipe and the data it trains on (what makes two runs paired)."""
        text = json.dumps({**self.model_dump(), **data_options}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Finetuned:
    """A plan trained by the final recipe, beside its paired baseline's metrics."""

    result: TrainResult
    paired: dict[str, Any] | None
    proxy_iou: float | None = None  # what the search measured for this plan, if known

    @property
    def iou(self) -> float:
        return float(self.result.metrics["iou"])

    def summary(self) -> dict[str, Any]:
        """The figures a card, a table and `metrics.json` show: proxy → final, and the paired
        baseline's final IoU."""
        m = self.result.metrics
        paired_iou = float(self.paired["iou"]) if self.paired else None
        return {"final_iou": self.iou, "proxy_iou": self.proxy_iou, "paired_baseline_iou": paired_iou,
                "delta_iou_vs_paired": self.iou - paired_iou if paired_iou is not None else None,
                "iou_ratio_vs_paired": self.iou / paired_iou if paired_iou else None,
                "final_epochs": m.get("epochs"), "best_epoch": m.get("best_epoch"),
                "stopped_early": m.get("stopped_early")}


def baseline_plan(baseline: str | Path) -> Plan:
    """The (unconverted) plan of a trained baseline checkpoint folder."""
    folder = Path(baseline)
    if not (folder / "plan.json").is_file():
        raise CubesearchError(f"--baseline {folder}: not a checkpoint folder (no plan.json)")
    plan = Plan.load(folder / "plan.json")
    if plan.sites or plan.insertions:
        raise CubesearchError(f"--baseline {folder}: a converted model; give the trained, "
                              "unconverted baseline")
    return plan


def train_final(plan: Plan, baseline: str | Path, *, recipe: Recipe | None = None, seed: int = 0,
                out: str | Path | None = None, start: Any = None, **options: Any) -> TrainResult:
    """`plan` trained by the final recipe from the trained `baseline` (its unconverted model);
    a plan without sites is the paired baseline itself. `start` (a module or a checkpoint
    folder of this plan): continue from its weights instead (a halving rung's survivor), the
    baseline still the teacher. `options`: `train`'s data and run options (data, input_size,
    train_tiles, val_tiles, batch_size, progress, log, …), and any `TrainConfig` field over
    the recipe's (a rung's `epochs`, `schedule_start`, `keep_best`…)."""
    recipe = recipe or Recipe()
    converted = bool(plan.sites or plan.insertions)  # new blocks to distil
    built = converted or bool(plan.widths)  # a model other than the baseline's (narrowed convs)
    if recipe.from_scratch and start is None:
        return train(fresh_model(plan, baseline, seed), plan=plan, teacher=str(baseline), seed=seed,
                     out=out, **{**recipe.train_options(converted), **options})
    if start is not None:
        module = isinstance(start, Module)  # a folder carries its own plan
        return train(start if module else str(start), plan=plan if module else None, teacher=str(baseline),
                     seed=seed, out=out, **{**recipe.train_options(converted), "distill_steps": 0,
                                            **options})
    return train(str(baseline), plan=plan if built else None, init_from=str(baseline),
                 seed=seed, out=out, **{**recipe.train_options(converted), **options})


def fresh_model(plan: Plan, baseline: str | Path, seed: int) -> Module:
    """The baseline's model rebuilt with freshly initialised weights (from `seed`; the caller's
    RNG untouched), converted by `plan`: the from-scratch arm starts here."""
    folder = Path(baseline)
    saved = baseline_plan(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = load_model_from(saved.model, source=folder / "plan.json", folder=folder,
                                **dict(saved.model_kwargs))
        return convert(model, plan) if plan.sites or plan.insertions or plan.widths else model


def paired_baseline(baseline: str | Path, *, recipe: Recipe | None = None, seed: int = 0,
                    cache: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """The paired baseline's metrics: the unconverted model trained by the same recipe, epochs,
    seed and data. With `cache` (a folder), kept there as `paired.json` and reused while the
    recipe, seed, data and baseline weights are the same."""
    recipe = recipe or Recipe()
    data_key = {k: v for k, v in options.items() if k not in ("progress", "log", "console")}
    key = recipe.key(seed=seed, baseline=file_sha256(Path(baseline) / "model.safetensors"), **data_key)
    file = Path(cache) / PAIRED_FILE if cache is not None else None
    if file is not None and file.is_file():
        stored = json.loads(file.read_text())
        if stored.get("key") == key:
            return stored["metrics"]
    result = train_final(baseline_plan(baseline), baseline, recipe=recipe, seed=seed, **options)
    metrics = {**result.metrics, "history": result.history}
    if file is not None:
        atomic_write(file, json.dumps({"key": key, "metrics": metrics}, indent=2, default=float))
    return metrics


def finetune(plan: Plan, baseline: str | Path, *, recipe: Recipe | None = None, seed: int = 0,
             out: str | Path | None = None, paired: bool = True, paired_cache: str | Path | None = None,
             proxy_iou: float | None = None, **options: Any) -> Finetuned:
    """`plan` trained by the final recipe, and (with `paired`) its paired baseline."""
    recipe = recipe or Recipe()
    result = train_final(plan, baseline, recipe=recipe, seed=seed, out=out, **options)
    twin = paired_baseline(baseline, recipe=recipe, seed=seed, cache=paired_cache, **options) \
        if paired else None
    return Finetuned(result=result, paired=twin, proxy_iou=proxy_iou)


def recorded_baseline(checkpoint: str | Path) -> Path | None:
    """The baseline a checkpoint was warm-started from, as its metrics recorded it."""
    file = Path(checkpoint) / "metrics.json"
    source = json.loads(file.read_text()).get("init_source") if file.is_file() else None
    if not source:
        return None
    folder = Path(source)
    folder = folder.parent if folder.name == "model.safetensors" else folder
    return folder if (folder / "plan.json").is_file() else None
