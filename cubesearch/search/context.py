"""What every trial of a search shares: sites, cost model, budget, datasets, trained baseline.

`build_context` loads the model once, finds its sites, and checks that the budget is reachable;
`ensure_datasets` and `ensure_baseline` fill in the data and the baseline's checkpoint (trained
once per `--out` and set of training settings, then reused). The context is picklable: the Ray
backend ships it to its workers.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch.utils.data import Dataset

from cubesearch import training
from cubesearch.blocks import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.core.logging import get_logger
from cubesearch.cost.budget import Budget
from cubesearch.cost.latency.model import LatencyModel
from cubesearch.cost.pricing import CostModel, plan_flops_params
from cubesearch.models.load import load_model
from cubesearch.plan.checkpoint import save
from cubesearch.plan.plan import Plan
from cubesearch.plan.sites import Site, find_sites
from cubesearch.plan.space import SearchSpace
from cubesearch.search import limits
from cubesearch.search.record import Phase, TrialOutcome
from cubesearch.search.settings import BASELINE_IDENTITY, SearchSettings, safe_name
from cubesearch.training.data import make_datasets

Datasets = tuple[Dataset, Dataset]  # (train, val)


@dataclass
class SearchContext:
    settings: SearchSettings
    space: SearchSpace
    sites: list[Site]  # every eligible site
    searchable: list[Site]  # those the space searches
    cost: CostModel
    base_flops: int
    base_params: int
    budget_flops: float
    out: Path
    baseline_dir: Path | None = None
    baseline_metrics: dict[str, float] = field(default_factory=dict)
    datasets: Datasets | None = None  # built once
    evaluator: Evaluator | None = None  # how a plan becomes an IoU; set by the search's set-up
    # What --budget bounds (FLOPs, or a latency in µs), and the latency model when latency is an
    # objective or the budget (cubesearch.cost.latency: measured on this device, from its table)
    budget: Budget | None = None
    latency: LatencyModel | None = None
    # What the backend's run fills now: `trials` trained trials, or a halving rung
    phase: Phase | None = None
    # `--timeout` as a wall-clock time (`time.time()`), set when the search starts: the
    # baseline's training, each trial's and the backends' scheduling stop at it
    deadline: float | None = None

    def time_left(self) -> float | None:
        """Seconds until the deadline (≤ 0: passed); None without a timeout."""
        return None if self.deadline is None else self.deadline - time.time()

    def out_of_time(self) -> bool:
        left = self.time_left()
        return left is not None and left <= 0

    def deadline_callbacks(self) -> list[training.Deadline]:
        """The training callback that stops a run at the deadline (none without a timeout)."""
        return [] if self.deadline is None else [training.Deadline(self.deadline)]

    def __post_init__(self) -> None:
        if self.phase is None:
            self.phase = Phase("search", self.settings.trials)

    def plan_for(self, sites_cfg: dict[str, CubeConfig]) -> Plan:
        s = self.settings
        return Plan(model=s.model, model_kwargs=s.model_args, input_size=s.input_size,
                    sites=dict(sites_cfg))

    def trial_dir(self, number: int) -> Path:
        """OUT/trials/STUDY/trial_NNNN: several studies may share one --out (and one storage)."""
        # the name only through safe_name (and --study refuses '.', '..', '/'): never outside --out
        return self.out / "trials" / self.settings.study_folder() / f"trial_{number:04d}"

    def trial_info(self, number: int, sites_cfg: dict[str, CubeConfig], *, progress: bool = False,
                   promotes: int | None = None) -> TrialInfo:
        return TrialInfo(number=number, plan=self.plan_for(sites_cfg), folder=self.trial_dir(number),
                         seed=self.settings.seed + number, settings=self.settings,
                         datasets=self.datasets, baseline_dir=self.baseline_dir,
                         baseline_metrics=dict(self.baseline_metrics), progress=progress,
                         promotes=promotes)


@dataclass(frozen=True)
class TrialInfo:
    """What an evaluator is told about the trial it scores."""

    number: int  # the Optuna trial number
    plan: Plan  # the plan (`plan.sites`: site name → CubeConfig)
    folder: Path  # where the trial's checkpoint goes (OUT/trials/STUDY/trial_NNNN)
    seed: int  # settings.seed + number: the trial's random state
    settings: SearchSettings
    datasets: Datasets | None = None  # as built from --data; None if the evaluator built none
    baseline_dir: Path | None = None  # the trained baseline's checkpoint, if there is one
    baseline_metrics: dict[str, float] = field(default_factory=dict)
    progress: bool = False
    # halving, above rung 0: the trial of the rung below this one continues (its checkpoint)
    promotes: int | None = None


class Evaluator(Protocol):
    """How a plan becomes an IoU, whichever backend schedules the trials.

    `prepare` runs once per search in the driver, under the `--out` lock, before any trial: it may
    fill in the context (datasets, a trained baseline…), which then travels with the
    context to Ray workers. `evaluate` runs once per plan within budget (a worker process under
    Ray): it returns the plan's `TrialOutcome` (IoU, measured costs, checkpoint) or raises, which
    records a failed trial with the exception as its reason. Evaluators must be picklable.
    """

    name: str

    def prepare(self, ctx: SearchContext, *, progress: bool, log: Callable[[str], None]) -> None: ...

    def evaluate(self, ctx: SearchContext, trial: TrialInfo) -> TrialOutcome: ...


def build_context(settings: SearchSettings, deadline: float | None = None) -> SearchContext:
    """Load the model once, find its sites, price plans, check the budget is reachable.
    `deadline`: when `--timeout` runs out (`time.time()`), counted from the search's start."""
    space = SearchSpace.load(settings.space)
    if space.widths and settings.strategy != "map":
        raise CubesearchError(
            f"space {space.name!r} offers widths (narrowed convs), which only `search --strategy "
            f"map` searches; --strategy {settings.strategy} and the commands built on it take a "
            "Cube-only space (e.g. default)")
    if settings.strategy == "map" and space.mode != "per_site":
        raise CubesearchError(
            f"--space {settings.space}: the site map scores and chooses each site on its own, so "
            f"--strategy map needs a per-site space (mode: per_site, as `default` or `joint`); "
            f"space {space.name!r} has mode {space.mode!r}")
    model = load_model(settings.model, pretrained=settings.pretrained, **settings.model_args)
    report = find_sites(model, input_size=settings.input_size)
    sites = list(report.sites)
    searchable = space.searchable(sites)
    if not searchable:
        low = len(space.model_copy(update={"min_lattice_q": 1}).searchable(sites))
        why = (f"; {low} match but have fewer than {space.min_lattice_q} channels per lattice "
               "position (set `min_lattice_q: 1` in the space to search them)" if low else "")
        raise CubesearchError(
            f"{settings.model}: no eligible 3×3 conv matches the space's sites ({space.sites!r}); "
            f"{len(sites)} eligible in the whole model{why}")
    cost = CostModel(report)
    base_flops, base_params = cost.flops({}), cost.params({})
    # --budget: FLOPs, a latency (25ms) or a share of the first cost objective named (60%);
    # latency from this device's table (profiled here first if it lacks this model)
    latency, limit = limits.setup(settings, model, report, space, searchable, cost)
    budget = limit.value if limit.objective == "gflops" else float("inf")
    check_budget_reachable(settings, space, searchable, cost, model, budget)
    return SearchContext(settings=settings, space=space, sites=sites, searchable=searchable,
                         cost=cost, base_flops=base_flops, base_params=base_params,
                         budget_flops=budget, out=Path(settings.out), budget=limit, latency=latency,
                         deadline=deadline)


def check_budget_reachable(settings: SearchSettings, space: SearchSpace, searchable: Sequence[Site],
                           cost: CostModel, model: torch.nn.Module, budget: float) -> None:
    """One error line when no plan of the space fits a FLOPs budget: the cheapest Cube plan, and
    under `--strategy map` (which also narrows convs) every conv at its narrowest width."""
    cheapest = cost.flops(cheapest_plan(space, searchable, cost))
    if cheapest <= budget:
        return
    narrow = {s.name: min(ws) for s in searchable if (ws := space.site_widths(s))}
    narrowest = (plan_flops_params(model, Plan(model=settings.model, input_size=settings.input_size,
                                               widths=narrow))[0]
                 if narrow and settings.strategy == "map" else None)
    if narrowest is not None and narrowest <= budget:
        return
    also = (f", {narrowest / 1e9:.3f} GFLOPs with every conv at its narrowest width"
            if narrowest is not None else "")
    raise CubesearchError(
        f"budget {settings.budget} ({budget / 1e9:.3f} GFLOPs) is below the cheapest plan in "
        f"space {space.name!r}: {cheapest / 1e9:.3f} GFLOPs{also} "
        f"(the model is {cost.flops({}) / 1e9:.3f} GFLOPs)")


def cheapest_plan(space: SearchSpace, sites: Sequence[Site], cost: CostModel) -> dict[str, CubeConfig]:
    """The lowest-FLOPs plan the space can produce (sites are priced independently)."""
    base = cost.flops({})
    return space.best_plan(sites, lambda name, cfg: cost.flops({name: cfg}) - base)


def costliest_flops(space: SearchSpace, sites: Sequence[Site], cost: CostModel) -> float:
    """FLOPs of the costliest plan the space can produce (sites are priced independently; a
    site the space may leave alone costs at least its conv)."""
    base = cost.flops({})

    def delta(name: str, cfg: CubeConfig) -> float:
        return cost.flops({name: cfg}) - base

    if space.mode == "per_site":
        return base + sum(max(0.0, *(delta(s.name, c) for c in space.site_combos(s))) for s in sites)
    keep = 0.0 if space.mode != "fullcube" else -math.inf
    return base + max(sum(max(keep, delta(s.name, c)) for s in sites)
                      for c in space.shared_combos(sites))


def budget_warning(ctx: SearchContext) -> str | None:
    """A line when the budget does not constrain the search: at or above the costliest plan
    (every plan is within it), or above the unconverted model's own cost."""
    if ctx.budget is not None and ctx.budget.objective != "gflops":
        return None  # a latency budget: cubesearch.cost.latency checked it against the fastest plan
    s, budget, base = ctx.settings, ctx.budget_flops, ctx.base_flops
    top = costliest_flops(ctx.space, ctx.searchable, ctx.cost)
    shown = f"budget {s.budget} ({budget / 1e9:.3f} GFLOPs)"
    if budget >= top:
        return (f"warning: {shown} is at or above the costliest plan in space {ctx.space.name!r} "
                f"({top / 1e9:.3f} GFLOPs; the unconverted model is {base / 1e9:.3f}): every plan "
                "is within budget, so it does not steer the search; a budget below 100% (e.g. "
                "60%) asks for savings")
    if budget > base:
        return (f"warning: {shown} is above the unconverted model's {base / 1e9:.3f} GFLOPs: it "
                "only rules out plans costing more than the model itself; a budget below 100% "
                "(e.g. 60%) asks for savings")
    return None


def budget_line(ctx: SearchContext) -> str:
    """`15.167 GFLOPs of 21.667`, or `25.000 ms of 31.2 ms on cpu (…)` under a latency budget."""
    if ctx.budget is not None and ctx.budget.objective == "latency" and ctx.latency is not None:
        return (f"{ctx.budget.value / 1e3:.3f} ms of {ctx.latency.latency_ms({}):.3f} ms on "
                f"{ctx.latency.fingerprint.label()}")
    return f"{ctx.budget_flops / 1e9:.3f} GFLOPs of {ctx.base_flops / 1e9:.3f}"


def ensure_datasets(ctx: SearchContext) -> None:
    if ctx.datasets is None:
        s = ctx.settings
        ctx.datasets = make_datasets(s.data, size=s.tile_size, train_tiles=s.train_tiles,
                                     val_tiles=s.val_tiles, seed=s.seed)


def baseline_dir(settings: SearchSettings, out: Path) -> Path:
    """OUT/baselines/MODEL-HASH: one trained baseline per distinct set of training settings."""
    fields = settings.identity(BASELINE_IDENTITY)
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    return out / "baselines" / f"{safe_name(Path(settings.model).name)}-{key}"


def ensure_baseline(ctx: SearchContext, *, progress: bool = True,
                    log: Callable[[str], None] | None = None) -> None:
    """Train the unconverted model once per study; later runs and every trial reuse it.
    `log` (default: the `cubesearch` logger) gets a line saying which."""
    log = log or get_logger(__name__).info
    folder = baseline_dir(ctx.settings, ctx.out)
    metrics_file = folder / "metrics.json"
    if metrics_file.exists() and (folder / "model.safetensors").exists():
        ctx.baseline_dir = folder
        ctx.baseline_metrics = json.loads(metrics_file.read_text())
        log(f"baseline: reusing {folder} (IoU {ctx.baseline_metrics.get('iou', float('nan')):.4f})")
        return
    s = ctx.settings
    log(f"baseline: training {s.model} for {s.baseline_epochs or s.epochs_per_trial:g} epochs")
    with torch.random.fork_rng():  # its initial weights depend on the seed, not on what ran before
        torch.manual_seed(s.seed)
        model = load_model(s.model, pretrained=s.pretrained, **s.model_args)
    plan = ctx.plan_for({})
    try:
        result = training.train(model, config=s.training, data=ctx.datasets, plan=plan,
                                epochs=s.baseline_epochs or s.epochs_per_trial, seed=s.seed,
                                input_size=(s.input_size[0], s.tile_size, s.tile_size),
                                progress=progress, callbacks=ctx.deadline_callbacks(),
                                distill_steps=0)  # the baseline has no blocks; trials distil
    except training.DeadlineReached as exc:
        raise CubesearchError(f"--timeout {s.timeout:g}s ran out while the baseline trained ({exc}); "
                              "nothing was saved or searched: give a longer --timeout") from None
    metrics = dict(result.metrics, gflops=ctx.base_flops / 1e9, params=ctx.base_params)
    save(folder, result.model.eval(), plan, metrics)
    ctx.baseline_dir, ctx.baseline_metrics = folder, metrics
