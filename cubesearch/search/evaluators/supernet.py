"""`SupernetEvaluator` (`--evaluator supernet`, and the one-shot strategy's scorer).

`prepare` (once per search, under the `--out` lock) trains a supernet from the search's trained
baseline, or resumes / reuses the one in `OUT/supernet/MODEL-HASH` (the hash covers the
baseline's settings and the supernet's training settings). `evaluate` scores a plan in it
(about a second: set the path, re-estimate the BatchNorms it changes, evaluate IoU on the
validation tiles); the costs are the cost model's, not measured on a built model, and no
checkpoint is written unless `checkpoints=True` (then the extracted model is saved like a
fine-tuned trial's). A score is not a trained trial: the search records it marked `scored`.
The supernet is loaded once per process (kept across plans and trials), so the evaluator
pickles small for Ray workers.

`workers` > 1 trains the supernet data-parallel on that many Ray Train workers
(`cubesearch.supernet.distributed`; the search's `--supernet-workers`, with `--backend ray`): a
global batch of `workers` × `--batch-size`, so another run than one worker's (its own folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from safetensors.torch import load_file
from torch import nn

from cubesearch.blocks import CubeConfig
from cubesearch.checkpoint import save
from cubesearch.models import load_model
from cubesearch.progressbar import eta_bar
from cubesearch.search.cluster import connect
from cubesearch.search.context import SearchContext, TrialInfo, ensure_baseline, ensure_datasets
from cubesearch.search.objectives import COST_OBJECTIVES, recorded_costs
from cubesearch.search.record import RECORDED_METRICS, TrialOutcome
from cubesearch.search.settings import SearchSettings
from cubesearch.supernet.distributed import train_supernet_distributed
from cubesearch.supernet.score import Scorer
from cubesearch.supernet.supernet import Supernet
from cubesearch.supernet.train import SupernetTrainConfig, SupernetTrainer, SupernetTrainResult

__all__ = ["SUPERNET_DIR", "SupernetEvaluator"]

SUPERNET_DIR = "supernet"
# The supernet this process has loaded to score plans (SupernetEvaluator._scorer)
_SCORERS: dict[tuple[object, ...], Scorer] = {}


@contextlib.contextmanager
def step_bar(label: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A bar (steps, ETA) on a terminal; off a terminal the trainer's epoch lines say it."""
    bar = eta_bar(label, Console(stderr=True), enabled=enabled)
    task = bar.add_task("", total=None)

    def on_step(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield on_step


@dataclass
class SupernetEvaluator:
    """Score each plan in a supernet trained once per search (see the module docstring)."""

    name: str = "supernet"
    epochs: float = 3.0
    distill_steps: int = 100
    random_paths: int = 2
    kd_weight: float = 1.0
    calib_batches: int = 8
    recalibrate: bool = True
    checkpoints: bool = False
    workers: int = 1  # data-parallel Ray Train workers for the supernet's training

    @classmethod
    def from_settings(cls, settings: SearchSettings) -> SupernetEvaluator:
        """The supernet a search with these settings scores its plans in: trained for
        `supernet_epochs`, its blocks first fitted to their convs for `distill_steps` batches, on
        `supernet_workers` Ray Train workers (data-parallel) when above 1."""
        return cls(epochs=settings.supernet_epochs, distill_steps=settings.distill_steps,
                   workers=settings.supernet_workers)

    def train_config(self, ctx: SearchContext) -> SupernetTrainConfig:
        s = ctx.settings
        return SupernetTrainConfig(epochs=self.epochs, distill_steps=self.distill_steps,
                                   random_paths=self.random_paths, kd_weight=self.kd_weight,
                                   lr=s.lr, base_lr=s.fine_tune_lr(True), batch_size=s.batch_size,
                                   budget_flops=ctx.budget_flops, seed=s.seed)

    def folder(self, ctx: SearchContext) -> Path:
        base = Path(ctx.baseline_dir).name if ctx.baseline_dir else "scratch"
        run: dict[str, object] = {"baseline": base, "space": ctx.space.model_dump(mode="json"),
                                  "train": asdict(self.train_config(ctx))}
        if self.workers > 1:  # another global batch: another run (one worker's keys unchanged)
            run["workers"] = self.workers
        key = json.dumps(run, sort_keys=True, default=str)
        return Path(ctx.out) / SUPERNET_DIR / f"{base}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"

    def _build(self, ctx: SearchContext) -> Supernet:
        s = ctx.settings
        model = load_model(s.model, **s.model_args)
        sn = Supernet.build(model, ctx.searchable, ctx.space, model_kwargs=s.model_args,
                            input_size=s.input_size)
        sn.model_spec, sn.cost = s.model, ctx.cost
        return sn

    def prepare(self, ctx: SearchContext, *, progress: bool, log: Callable[[str], None]) -> None:
        ensure_datasets(ctx)
        ensure_baseline(ctx, progress=progress, log=log)
        folder = self.folder(ctx)
        if (folder / "final" / "supernet.json").is_file():
            log(f"supernet: reusing {folder}")
            return
        assert ctx.baseline_dir is not None and ctx.datasets is not None  # ensured above
        sn = self._build(ctx)
        sn.load_baseline(load_file(str(Path(ctx.baseline_dir) / "model.safetensors")))
        log(f"supernet: training in {folder} ({len(sn.sites)} sites, {self.epochs:g} epochs)")
        if self.workers > 1:
            result = self._train_distributed(ctx, sn, folder, log)
        else:
            with step_bar("supernet training", progress) as on_step:
                result = SupernetTrainer(sn, ctx.datasets[0], self.train_config(ctx),
                                         out=folder / "train", log=log, on_step=on_step).run()
        sn.save(folder / "final", extra={"training": asdict(result)})

    def _train_distributed(self, ctx: SearchContext, sn: Supernet, folder: Path,
                           log: Callable[[str], None]) -> SupernetTrainResult:
        """The supernet's training on `workers` Ray Train workers, on the search's Ray cluster."""
        s = ctx.settings
        assert ctx.datasets is not None
        if s.backend == "ray":
            connect(s)  # --address, or a local Ray instance; a no-op when Ray is up
        return train_supernet_distributed(sn, ctx.datasets[0], self.train_config(ctx),
                                          workers=self.workers, out=folder / "train", log=log,
                                          cpus_per_worker=s.cpus_per_trial)

    def _scorer(self, ctx: SearchContext) -> Scorer:
        """The loaded supernet's scorer, once per process (a Ray worker scoring plan after plan
        keeps it): keyed by the saved supernet (a retrained one is loaded again) and scoring."""
        folder = self.folder(ctx) / "final"
        s = ctx.settings
        stamp = (folder / "supernet.json").stat().st_mtime_ns
        key = (str(folder.resolve()), stamp, self.calib_batches, self.recalibrate, s.batch_size,
               s.seed)
        if key not in _SCORERS:
            ensure_datasets(ctx)
            assert ctx.datasets is not None
            model = load_model(s.model, **s.model_args)
            sn = Supernet.load(folder, model, report=ctx.searchable)
            sn.cost = ctx.cost
            train_ds, val_ds = ctx.datasets
            _SCORERS.clear()  # one supernet in memory at a time
            _SCORERS[key] = Scorer(sn, train_ds, val_ds, calib_batches=self.calib_batches,
                                   batch_size=s.batch_size, seed=s.seed, recalibrate=self.recalibrate)
        return _SCORERS[key]

    def extract(self, ctx: SearchContext, sites_cfg: dict[str, CubeConfig]) -> nn.Module:
        """The plan as an ordinary converted model holding its supernet weights (a copy)."""
        return self._scorer(ctx).supernet.extract(sites_cfg)

    def evaluate(self, ctx: SearchContext, trial: TrialInfo) -> TrialOutcome:
        t0 = time.perf_counter()
        scorer = self._scorer(ctx)
        sites_cfg = dict(trial.plan.sites)
        metrics = scorer(sites_cfg)
        costs = {name: COST_OBJECTIVES[name].estimate(ctx, sites_cfg)
                 for name in recorded_costs(ctx.settings.objectives)}
        checkpoint = None
        if self.checkpoints:
            model = scorer.supernet.extract(sites_cfg).eval()
            save(trial.folder, model, trial.plan, {**metrics, **costs, "evaluator": self.name})
            checkpoint = str(trial.folder)
        recorded = {k: float(metrics[k]) for k in RECORDED_METRICS if k in metrics}
        return TrialOutcome(iou=float(metrics["iou"]), costs=costs,
                            seconds=time.perf_counter() - t0, checkpoint=checkpoint,
                            metrics=recorded)
