"""`cubesearch.search`: Optuna multi-objective search of IoU (up) against GFLOPs (down).

The pieces, in the order a trial meets them (DESIGN.md §2):

- `SearchSettings`: everything the command line says, as validated data.
- `SearchContext`: what every trial shares — the sites, the cost model, the budget, the datasets
  and the trained baseline's checkpoint. Built once per study; picklable for Ray workers.
- `evaluate_plan(ctx, plan)`: one trial's work, whichever backend schedules it: cost-model
  pre-check, convert, warm start from the baseline, train, evaluate, fvcore, checkpoint.
- `search(...)`: the local Optuna loop around it, with resumable storage and a live front.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cubesearch.blocks import CubeConfig
from cubesearch.errors import CubesearchError, one_line
from cubesearch.pareto import ParetoPoint, non_dominated, plot_pareto
from cubesearch.space import SearchSpace, parse_budget

OBJECTIVE_DIRECTIONS = {"iou": "maximize", "gflops": "minimize", "params": "minimize"}
SAMPLERS = ("nsga2", "tpe", "random")
TRIAL_LR_DIVISOR = 4


class SearchSettings(BaseModel):
    """A search as data: the CLI's options, stored with the study so a resume can check them."""

    model_config = ConfigDict(extra="forbid")
    model: str
    budget: str
    space: str = "default"
    trials: int = Field(20, ge=1)
    timeout: float | None = None  # seconds
    data: str = "synthetic"
    epochs_per_trial: float = Field(1.0, gt=0)
    # Before a trial trains end to end, each Cube block is fitted to the conv it replaces
    # (local distillation from the baseline) for this many batches: cheap, and it starts the
    # trial from near the baseline's accuracy instead of from random blocks.
    distill_steps: int = Field(100, ge=0)
    baseline_epochs: float | None = None  # defaults to epochs_per_trial
    storage: str | None = None
    study: str | None = None
    out: str = "runs/search"
    seed: int = 0
    objectives: tuple[str, ...] = ("iou", "gflops")
    input_size: tuple[int, int, int] = (3, 512, 512)  # the FLOPs reference input
    tile_size: int = 128  # training tiles
    train_tiles: int = 192
    val_tiles: int = 64
    batch_size: int = 8
    lr: float = 2e-3  # the baseline's peak learning rate, and that of a trial's new blocks
    # A trial fine-tunes the weights it takes from the trained baseline at a lower peak: at the
    # baseline's own lr, two epochs cost the unchanged model 0.1 of its IoU (0.49 → 0.39 at
    # lr / 4); its Cube blocks are new and train at `lr` (benchmarks/results/trial-lr.md).
    trial_lr: float | None = Field(None, gt=0)  # None: lr / TRIAL_LR_DIVISOR
    sampler: Literal["nsga2", "tpe", "random"] = "nsga2"
    num_classes: int = 1
    pretrained: bool = False
    backend: Literal["local", "ray"] = "local"
    # Ray backend (cubesearch.distributed); ignored by the local one
    address: str | None = None  # auto, HOST:PORT or ray://HOST:PORT; None: a local Ray instance
    max_concurrent: int | None = Field(None, ge=1)  # None: as many as the cluster's CPUs/GPUs fit
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)

    def fine_tune_lr(self, warm_started: bool = True) -> float:
        """Peak learning rate of a trial's warm-started weights (`lr` with nothing to start from)."""
        if self.trial_lr is not None:
            return self.trial_lr
        return self.lr / TRIAL_LR_DIVISOR if warm_started else self.lr

    def study_name(self) -> str:
        if self.study:
            return self.study
        spec = self.model
        if spec.split(":")[0].endswith(".py"):  # a model file: its stem (and picked name)
            path, _, name = spec.partition(".py")
            spec = Path(path).name + name
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)
        return f"{safe}-{Path(self.space).stem}"

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out).resolve() / 'study.db'}"


def parse_objectives(text: str | Sequence[str]) -> tuple[str, ...]:
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    bad = [n for n in names if n not in OBJECTIVE_DIRECTIONS]
    if bad or "iou" not in names or len(names) < 2 or len(set(names)) != len(names):
        raise CubesearchError(
            f"objectives {','.join(names)!r}: give iou and at least one of gflops, params, "
            "each once (e.g. iou,gflops or iou,gflops,params)")
    return tuple(names)


# --- the context every trial shares ---------------------------------------------------------


@dataclass
class SearchContext:
    settings: SearchSettings
    space: SearchSpace
    sites: list[Any]  # all eligible sites (cubesearch.sites.Site)
    searchable: list[Any]
    cost: Any  # cubesearch.cost.CostModel
    base_flops: int
    base_params: int
    budget_flops: float
    out: Path
    baseline_dir: Path | None = None
    baseline_metrics: dict[str, float] = field(default_factory=dict)
    datasets: Any = None  # (train, val), built once

    def plan_for(self, sites_cfg: dict[str, CubeConfig]):
        from cubesearch.plan import Plan

        s = self.settings
        return Plan(model=s.model, model_kwargs={"num_classes": s.num_classes, "in_channels":
                                                 s.input_size[0]},
                    input_size=s.input_size, sites=dict(sites_cfg))


def build_context(settings: SearchSettings, *, progress: bool = True) -> SearchContext:
    """Load the model once, find its sites, price plans, check the budget is reachable."""
    from cubesearch.cost import CostModel
    from cubesearch.models import load_model
    from cubesearch.sites import find_sites

    space = SearchSpace.load(settings.space)
    model = load_model(settings.model, num_classes=settings.num_classes,
                       in_channels=settings.input_size[0], pretrained=settings.pretrained)
    report = find_sites(model, input_size=settings.input_size)
    sites = list(getattr(report, "sites", report))
    searchable = space.searchable(sites)
    if not searchable:
        raise CubesearchError(
            f"{settings.model}: no eligible 3×3 conv matches the space's sites ({space.sites!r}); "
            f"{len(sites)} eligible in the whole model")
    cost = CostModel.from_report(report) if hasattr(CostModel, "from_report") else CostModel(report)
    base_flops, base_params = cost.flops({}), cost.params({})
    budget = parse_budget(settings.budget, base_flops)
    cheapest = cheapest_plan(space, searchable, cost)
    cheapest_flops = cost.flops(cheapest)
    if cheapest_flops > budget:
        raise CubesearchError(
            f"budget {settings.budget} ({budget / 1e9:.3f} GFLOPs) is below the cheapest plan in "
            f"space {space.name!r}: {cheapest_flops / 1e9:.3f} GFLOPs "
            f"(the model is {base_flops / 1e9:.3f} GFLOPs)")
    out = Path(settings.out)
    return SearchContext(settings=settings, space=space, sites=sites, searchable=searchable,
                         cost=cost, base_flops=base_flops, base_params=base_params,
                         budget_flops=budget, out=out)


def cheapest_plan(space: SearchSpace, sites: Sequence[Any], cost: Any) -> dict[str, CubeConfig]:
    """The lowest-FLOPs plan the space can produce (sites are priced independently)."""
    if space.mode == "per_site":
        plan = {}
        for s in sites:
            best = min(space.site_combos(s), key=lambda c, s=s: cost.flops({s.name: c}))
            if cost.flops({s.name: best}) < cost.flops({}):
                plan[s.name] = best
        return plan
    combos = space.shared_combos(sites)
    best = min(combos, key=lambda c: cost.flops({s.name: c for s in sites}))
    plan = {s.name: best for s in sites}
    if space.mode == "shared":  # replacing a site may cost more than keeping it
        plan = {n: c for n, c in plan.items() if cost.flops({n: c}) < cost.flops({})}
    return plan


# --- one trial: the same code for every backend ---------------------------------------------


class TrialError(RuntimeError):
    """A trial that failed for a reason worth recording (NaN loss, out of memory…)."""


def plan_cost(ctx: SearchContext, sites_cfg: dict[str, CubeConfig]) -> dict[str, float]:
    """Cost-model figures of a plan; microseconds, no model built."""
    flops = ctx.cost.flops(sites_cfg)
    return {"flops": flops, "gflops": flops / 1e9, "params": ctx.cost.params(sites_cfg),
            "feasible": flops <= ctx.budget_flops,
            "constraint": (flops - ctx.budget_flops) / ctx.budget_flops}


def trial_dir(ctx: SearchContext, number: int) -> Path:
    """OUT/trials/STUDY/trial_NNNN: several studies may share one --out (and one storage)."""
    return ctx.out / "trials" / ctx.settings.study_name() / f"trial_{number:04d}"


def evaluate_plan(ctx: SearchContext, sites_cfg: dict[str, CubeConfig], number: int,
                  *, progress: bool = False) -> dict[str, Any]:
    """Build, warm-start, train and measure one plan; save its checkpoint. Raises on failure."""
    import torch

    from cubesearch.checkpoint import save
    from cubesearch.conversion import convert
    from cubesearch.cost import count_flops
    from cubesearch.models import load_model
    from cubesearch.training import train

    s = ctx.settings
    t0 = time.perf_counter()
    plan = ctx.plan_for(sites_cfg)
    with torch.random.fork_rng():  # the blocks' initial weights depend on the trial, not the process
        torch.manual_seed(s.seed + number)
        model = convert(load_model(s.model, num_classes=s.num_classes, in_channels=s.input_size[0]),
                        plan)
    result = train(model, data=ctx.datasets, epochs=s.epochs_per_trial, plan=plan,
                   input_size=(s.input_size[0], s.tile_size, s.tile_size), seed=s.seed + number,
                   lr=s.fine_tune_lr(ctx.baseline_dir is not None), new_lr=s.lr,
                   batch_size=s.batch_size, init_from=ctx.baseline_dir, progress=progress,
                   distill_steps=s.distill_steps if ctx.baseline_dir and (plan.sites or plan.insertions)
                   else 0)
    metrics = dict(result.metrics)
    if not all(math.isfinite(float(metrics.get(k, 0.0))) for k in ("loss", "iou")):
        raise TrialError(f"non-finite training result (loss={metrics.get('loss')})")
    trained = result.model.eval()
    flops = count_flops(trained, s.input_size)
    params = sum(p.numel() for p in trained.parameters())
    metrics.update(gflops=flops / 1e9, params=params, trial=number,
                   seconds=time.perf_counter() - t0,
                   baseline_iou=ctx.baseline_metrics.get("iou"),
                   baseline_gflops=ctx.base_flops / 1e9)
    folder = trial_dir(ctx, number)
    save(folder, trained, plan, metrics)
    return {"iou": float(metrics["iou"]), "gflops": flops / 1e9, "params": params,
            "seconds": metrics["seconds"], "checkpoint": str(folder), "metrics": metrics}


# --- the study: storage, sampler, references ------------------------------------------------

# Settings that define a study: resuming with different values would mix incomparable trials.
STUDY_IDENTITY = ("model", "space", "budget", "objectives", "input_size", "data", "num_classes",
                  "tile_size")


def heartbeat() -> tuple[int, int]:
    """(interval, grace) seconds for Optuna's heartbeat; env CUBESEARCH_HEARTBEAT="1,3" for tests."""
    raw = os.environ.get("CUBESEARCH_HEARTBEAT", "10,30")
    interval, grace = (int(v) for v in raw.split(","))
    return interval, grace


def make_storage(url: str):
    import optuna
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    interval, grace = heartbeat()
    attempts = 5
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; we rely on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=interval, grace_period=grace,
                                  failed_trial_callback=RetryFailedTrialCallback(max_retry=2),
                                  engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite")
                                  else None)
        except (ImportError, ModuleNotFoundError) as exc:
            raise CubesearchError(f"storage {url!r} needs a database driver: {exc}") from None
        except Exception as exc:  # sqlalchemy OperationalError and friends
            # Several processes opening a fresh shared database race to create Optuna's schema; the
            # loser sees a duplicate-key error and simply opens it again once the winner is done.
            racing = "duplicate key" in str(exc) or "already exists" in str(exc)
            if racing and attempt < attempts - 1:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise CubesearchError(f"cannot open storage {url!r}: {one_line(exc)}") from None
    raise AssertionError("unreachable")


def make_sampler(name: str, seed: int, n_trials: int, constrained: bool = True):
    import optuna

    constraints = constraints_of if constrained else None
    if name == "nsga2":
        population = max(4, min(50, n_trials // 4))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed,
                                             constraints_func=constraints)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constraints_func=constraints,
                                          n_startup_trials=max(4, min(10, n_trials // 4)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise CubesearchError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")


def constraints_of(trial) -> list[float]:
    """Optuna constraint: ≤ 0 is feasible. Relative FLOPs over budget."""
    return [float(trial.user_attrs.get("constraint", 0.0))]


def open_study(settings: SearchSettings, *, sampler_seed_offset: int = 0):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(settings.storage_url())
    directions = [OBJECTIVE_DIRECTIONS[o] for o in settings.objectives]
    name = settings.study_name()
    sampler = make_sampler(settings.sampler, settings.seed + sampler_seed_offset, settings.trials)
    study = optuna.create_study(study_name=name, storage=storage, directions=directions,
                                sampler=sampler, load_if_exists=True)
    stored = study.user_attrs.get("settings")
    mine = json.loads(settings.model_dump_json())
    if stored is None:
        study.set_user_attr("settings", mine)
    else:
        changed = [k for k in STUDY_IDENTITY if json.dumps(stored.get(k)) != json.dumps(mine.get(k))]
        if changed:
            diffs = ", ".join(f"{k}: {stored.get(k)!r} → {mine.get(k)!r}" for k in changed)
            raise CubesearchError(f"study {name!r} in {settings.storage_url()} was started with other "
                                  f"settings ({diffs}); resume with the same ones or pick --study NAME")
    return study


def study_points(study) -> list[ParetoPoint]:
    """Every completed trial as a point (user attributes are the record, whichever backend ran it)."""
    from optuna.trial import TrialState

    points = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        if "iou" not in a:
            continue
        points.append(ParetoPoint(
            trial=t.number, iou=float(a["iou"]), gflops=float(a["gflops"]), params=int(a["params"]),
            sites_replaced=int(a.get("sites_replaced", 0)), label=a.get("reference", ""),
            feasible=bool(a.get("feasible", True)) and not a.get("infeasible", False),
            plan_path=a.get("checkpoint") and str(Path(a["checkpoint"]) / "plan.json"),
            checkpoint=a.get("checkpoint"),
            extra={k: a[k] for k in ("seconds", "f1", "precision", "recall", "oa") if k in a}))
    return points


# --- baseline -------------------------------------------------------------------------------


@contextlib.contextmanager
def folder_lock(path: Path):
    """An exclusive advisory lock (fcntl) held for the block; released if the process dies."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_datasets(ctx: SearchContext) -> None:
    if ctx.datasets is None:
        from cubesearch.data import make_datasets

        s = ctx.settings
        ctx.datasets = make_datasets(s.data, size=s.tile_size, train_tiles=s.train_tiles,
                                     val_tiles=s.val_tiles, seed=s.seed)


# Settings the trained baseline depends on: studies in one --out that agree on them share it.
BASELINE_IDENTITY = ("model", "num_classes", "input_size", "data", "tile_size", "train_tiles", "val_tiles",
                     "batch_size", "lr", "seed", "epochs_per_trial", "baseline_epochs", "pretrained")


def baseline_dir(settings: SearchSettings, out: Path) -> Path:
    """OUT/baselines/MODEL-HASH: one trained baseline per distinct set of training settings."""
    import hashlib

    fields = settings.model_dump(mode="json", include=set(BASELINE_IDENTITY))
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(settings.model).name)
    return out / "baselines" / f"{name}-{key}"


def ensure_baseline(ctx: SearchContext, *, progress: bool = True, log: Callable[[str], None] = print
                    ) -> None:
    """Train the unconverted model once per study; later runs and every trial reuse it."""
    from cubesearch.checkpoint import save
    from cubesearch.models import load_model
    from cubesearch.training import train

    folder = baseline_dir(ctx.settings, ctx.out)
    metrics_file = folder / "metrics.json"
    if metrics_file.exists() and (folder / "model.safetensors").exists():
        ctx.baseline_dir = folder
        ctx.baseline_metrics = json.loads(metrics_file.read_text())
        log(f"baseline: reusing {folder} (IoU {ctx.baseline_metrics.get('iou', float('nan')):.4f})")
        return
    s = ctx.settings
    log(f"baseline: training {s.model} for {s.baseline_epochs or s.epochs_per_trial:g} epochs")
    import torch

    with torch.random.fork_rng():  # its initial weights depend on the seed, not on what ran before
        torch.manual_seed(s.seed)
        model = load_model(s.model, num_classes=s.num_classes, in_channels=s.input_size[0],
                           pretrained=s.pretrained)
    plan = ctx.plan_for({})
    result = train(model, data=ctx.datasets, epochs=s.baseline_epochs or s.epochs_per_trial,
                   plan=plan, input_size=(s.input_size[0], s.tile_size, s.tile_size), seed=s.seed,
                   lr=s.lr, batch_size=s.batch_size, progress=progress)
    metrics = dict(result.metrics, gflops=ctx.base_flops / 1e9, params=ctx.base_params)
    save(folder, result.model.eval(), plan, metrics)
    ctx.baseline_dir, ctx.baseline_metrics = folder, metrics


# --- the trial as Optuna sees it ------------------------------------------------------------


def objective_values(settings: SearchSettings, iou: float, gflops: float, params: int
                     ) -> tuple[float, ...]:
    table = {"iou": iou, "gflops": gflops, "params": float(params)}
    return tuple(table[o] for o in settings.objectives)


def price_trial(ctx: SearchContext, trial) -> tuple[dict[str, CubeConfig], tuple[float, ...] | None]:
    """Sample `trial`'s plan (define-by-run) and record its cost-model figures as user attributes.

    An over-budget plan (not a reference) is finished here, without training: it is recorded as
    infeasible and its objective values are returned. Otherwise returns (plan, None): train it.
    """
    sites_cfg = ctx.space.sample_plan(trial, ctx.searchable)
    reference = trial.user_attrs.get("reference", "")
    if reference == "baseline":  # the unconverted model, whatever the space's mode samples
        sites_cfg = {}
    cost = plan_cost(ctx, sites_cfg)
    trial.set_user_attr("plan", {name: cfg.to_dict() for name, cfg in sites_cfg.items()})
    trial.set_user_attr("sites_replaced", len(sites_cfg))
    trial.set_user_attr("gflops_estimate", cost["gflops"])
    trial.set_user_attr("constraint", cost["constraint"])
    trial.set_user_attr("feasible", bool(cost["feasible"]))
    if not cost["feasible"] and not reference:
        # Over budget: rejected before any training; the sampler learns the boundary from the
        # constraint. The IoU value is a floor so the trial never joins a front.
        trial.set_user_attr("infeasible", True)
        trial.set_user_attr("iou", 0.0)
        trial.set_user_attr("gflops", cost["gflops"])
        trial.set_user_attr("params", int(cost["params"]))
        return sites_cfg, objective_values(ctx.settings, 0.0, cost["gflops"], int(cost["params"]))
    return sites_cfg, None


def fail_reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()[:500]}"


def record_trial_result(ctx: SearchContext, trial, out: dict[str, Any]) -> tuple[float, ...]:
    """Store `evaluate_plan`'s figures as the trial's user attributes; return its objective values."""
    for key in ("iou", "gflops", "params", "seconds", "checkpoint"):
        trial.set_user_attr(key, out[key])
    for key in ("f1", "precision", "recall", "oa", "loss"):
        if key in out["metrics"]:
            trial.set_user_attr(key, float(out["metrics"][key]))
    return objective_values(ctx.settings, out["iou"], out["gflops"], out["params"])


def run_optuna_trial(ctx: SearchContext, trial, *, progress: bool = False) -> tuple[float, ...]:
    """Sample a plan, price it, and train it if it is within budget (or a reference)."""
    sites_cfg, values = price_trial(ctx, trial)
    if values is not None:
        return values
    try:
        out = evaluate_plan(ctx, sites_cfg, trial.number, progress=progress)
    except Exception as exc:
        trial.set_user_attr("fail_reason", fail_reason(exc))
        raise
    return record_trial_result(ctx, trial, out)


def enqueue_references(study, ctx: SearchContext) -> None:
    """The unconverted model and the FullCube plan go first: the front always has them to beat."""
    if study.trials:
        return
    fullcube = {s.name: ctx.space.default_config() for s in ctx.searchable}
    study.enqueue_trial(ctx.space.params_for({}, ctx.searchable) if ctx.space.mode != "fullcube"
                        else {}, user_attrs={"reference": "baseline"}, skip_if_exists=False)
    study.enqueue_trial(ctx.space.params_for(fullcube, ctx.searchable),
                        user_attrs={"reference": "fullcube"}, skip_if_exists=False)


# --- the search -----------------------------------------------------------------------------


# A plan over budget is rejected by the cost model in microseconds, so `--trials` counts trained
# trials only; this many rejections per wanted trial end a search whose budget the space can
# hardly meet (with a message) instead of letting it sample forever.
MAX_REJECTIONS_PER_TRIAL = 25


@dataclass(frozen=True)
class TrialCounts:
    """The study's finished trials: trained (and evaluated), rejected over budget, failed."""

    trained: int
    rejected: int
    failed: int

    @classmethod
    def of(cls, study) -> TrialCounts:
        from optuna.trial import TrialState

        trained = rejected = failed = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            if t.state == TrialState.FAIL:
                failed += 1
            elif t.user_attrs.get("infeasible"):
                rejected += 1
            else:
                trained += 1
        return cls(trained, rejected, failed)

    def gave_up(self, wanted: int) -> bool:
        """Short of its trained trials after so many rejected plans that the search stops."""
        return self.trained < wanted and self.rejected >= MAX_REJECTIONS_PER_TRIAL * wanted

    def finished(self, wanted: int) -> bool:
        """The search has its trained trials, or has given up."""
        return self.trained >= wanted or self.gave_up(wanted)

    def all_failed(self) -> bool:
        return self.failed >= 3 and self.trained + self.rejected == 0

    def tight_budget_note(self, wanted: int) -> str | None:
        if not self.gave_up(wanted):
            return None
        return (f"stopped after {self.rejected} plans over budget with {self.trained} of {wanted} "
                "trials trained: the budget is tight for this space; raise --budget or narrow the "
                "space (fewer sites kept, cheaper knobs)")


@dataclass
class SearchResult:
    """What a search leaves: where the study is, every point, and the Pareto front."""

    study_name: str
    storage: str
    out: Path
    budget_gflops: float
    baseline: ParetoPoint | None
    points: list[ParetoPoint]
    front: list[ParetoPoint]
    n_complete: int  # trained and evaluated (`--trials` counts these)
    n_failed: int
    n_rejected: int = 0  # over budget, rejected by the cost model without training
    study: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study_name, "storage": self.storage, "out": str(self.out),
            "budget_gflops": self.budget_gflops, "trials_complete": self.n_complete,
            "trials_rejected": self.n_rejected, "trials_failed": self.n_failed,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "pareto": [p.to_dict() for p in self.front],
        }


def collect_result(study, ctx: SearchContext) -> SearchResult:

    points = study_points(study)
    baseline = next((p for p in points if p.label == "baseline"), None)
    front = non_dominated(points, ctx.settings.objectives)
    counts = TrialCounts.of(study)
    return SearchResult(study_name=study.study_name, storage=ctx.settings.storage_url(), out=ctx.out,
                        budget_gflops=ctx.budget_flops / 1e9, baseline=baseline, points=points,
                        front=front, n_complete=counts.trained, n_failed=counts.failed,
                        n_rejected=counts.rejected, study=study)


def front_table(result: SearchResult, title: str = "Pareto front"):
    from rich.table import Table

    table = Table(title=title)
    for col in ("trial", "IoU", "ΔIoU", "GFLOPs", "saving", "params", "sites", "note"):
        # numbers never wrap; a long note does when the console is narrow
        table.add_column(col, justify="left" if col == "note" else "right", no_wrap=col != "note")
    base = result.baseline
    rows = list(result.front)
    if base is not None and base not in rows:
        rows = [*rows, base]
    for p in rows:
        d_iou = f"{p.iou - base.iou:+.4f}" if base else ""
        saving = f"{1 - p.gflops / base.gflops:.1%}" if base and base.gflops else ""
        note = p.label + ("" if p.feasible else " (over budget)")
        table.add_row(str(p.trial), f"{p.iou:.4f}", d_iou, f"{p.gflops:.3f}", saving, f"{p.params:,}",
                      str(p.sites_replaced), note.strip())
    return table


class SearchProgress:
    """What a running search shows, whichever backend schedules its trials: on a terminal a bar
    with the current Pareto front under it (the front is dropped when the search ends: the
    caller prints the final one); elsewhere (a log file, CI) one line per finished trial."""

    def __init__(self, ctx: Any, console: Any, *, done: int, enabled: bool, label: str = "search"):
        from rich.console import Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.ctx, self.console, self.label, self.enabled = ctx, console, label, enabled
        self.total = ctx.settings.trials
        live_view = enabled and console.is_terminal
        self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.description}"), console=console, disable=not live_view)
        self.task = self.bar.add_task("", total=self.total, completed=done)
        self._group = Group
        self.live = (Live(Group(self.bar), console=console, refresh_per_second=4, transient=False)
                     if live_view else None)

    def trial_finished(self, study: Any, trial: Any) -> None:
        from optuna.trial import TrialState

        counts = TrialCounts.of(study)
        n = counts.trained
        a = trial.user_attrs
        if trial.state != TrialState.COMPLETE:
            what = f"#{trial.number}: failed"
        elif a.get("infeasible"):
            what = f"#{trial.number}: over budget"
        else:
            what = (f"#{trial.number}: IoU {a.get('iou', float('nan')):.4f}, "
                    f"{a.get('gflops', float('nan')):.3f} GFLOPs")
        if counts.rejected:
            what += f" ({counts.rejected} over budget so far)"
        self.bar.update(self.task, completed=n, description=f"last {what}")
        if self.live is not None:
            front = front_table(collect_result(study, self.ctx), "current Pareto front")
            self.live.update(self._group(self.bar, front))
        elif self.enabled and not a.get("infeasible"):  # rejections show in the next line's count
            self.console.print(f"{self.label}: {n}/{self.total} trained, {what}")

    def __enter__(self) -> SearchProgress:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self._group(self.bar))
            self.live.stop()


def search(model: str, budget: str, *, progress: bool = True, console=None,
           **options: Any) -> SearchResult:
    """Run (or resume) a search; `options` are `SearchSettings` fields. Returns the result.

    Re-running with the same `out`/`storage` and study resumes: completed trials are kept, the
    baseline is not retrained, and `trials` counts the total.
    """
    import optuna
    from optuna.trial import TrialState
    from rich.console import Console

    settings = SearchSettings(model=model, budget=budget, **options)
    progress = progress and not os.environ.get("CUBESEARCH_NO_PROGRESS")
    console = console or Console(stderr=True)
    if settings.backend == "ray":  # same study, same trial function; Ray Tune schedules it
        from cubesearch.distributed import search_ray

        return search_ray(settings, progress=progress, console=console)
    log = console.print
    ctx = build_context(settings)
    ctx.out.mkdir(parents=True, exist_ok=True)
    study = open_study(settings, sampler_seed_offset=0)
    done = TrialCounts.of(study).trained
    offset = len(study.trials) + (os.getpid() if settings.storage else 0)
    if offset:  # a resumed or second process must not replay the first one's random stream
        study.sampler = make_sampler(settings.sampler, settings.seed + offset, settings.trials)
    log(f"study {study.study_name!r} in {settings.storage_url()}: {done} of {settings.trials} trials "
        f"trained; budget {ctx.budget_flops / 1e9:.3f} GFLOPs of {ctx.base_flops / 1e9:.3f} "
        f"({len(ctx.searchable)} searchable sites, space {ctx.space.name!r})")
    ensure_datasets(ctx)
    with folder_lock(ctx.out / ".baseline.lock"):  # processes sharing --out train it once
        ensure_baseline(ctx, progress=progress, log=log)
        enqueue_references(study, ctx)

    first_error: list[str] = []

    def stop_when_done(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            reason = trial.user_attrs.get("fail_reason", "unknown error")
            if not first_error:
                first_error.append(f"trial {trial.number}: {reason}")
            log(f"[yellow]trial {trial.number} failed: {reason}[/yellow]")
        counts = TrialCounts.of(study)
        if counts.all_failed() or counts.finished(settings.trials):
            study.stop()

    view = SearchProgress(ctx, console, done=done, enabled=progress)
    remaining = settings.trials - done
    if remaining > 0:
        with view:
            study.optimize(
                lambda t: run_optuna_trial(ctx, t), timeout=settings.timeout, catch=(Exception,),
                n_trials=remaining * (MAX_REJECTIONS_PER_TRIAL + 3),  # a bound; the callback stops
                callbacks=[stop_when_done, view.trial_finished])
    note = TrialCounts.of(study).tight_budget_note(settings.trials)
    if note:
        log(f"[yellow]{note}[/yellow]")
    result = collect_result(study, ctx)
    if result.n_complete == 0 and first_error:
        raise CubesearchError(f"every trial failed; the first: {first_error[0]}")
    write_summary(result, ctx)
    return result


def write_summary(result: SearchResult, ctx: SearchContext) -> None:
    """`search.json` and the plot next to the study, written atomically."""
    summary = ctx.out / "search.json"
    tmp = summary.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    tmp.replace(summary)
    plot_pareto(result.points, result.front, ctx.out / "pareto.png", None,
                title=f"{ctx.settings.model}: IoU vs GFLOPs", budget_gflops=result.budget_gflops)
