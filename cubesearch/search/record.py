"""The study as the record: storage, what a trial leaves in it, and what is read back.

- `open_storage(url)`: the one way to open an Optuna storage (search, Ray searcher, export).
- `TrialOutcome`: what evaluating a plan gives (IoU, measured costs, checkpoint, figures), written
  to and read from a trial's user attributes, and passed from a Ray worker to the driver.
- `TrialCounts`: trained / scored / rejected over budget / failed, and when a phase is finished.
- `Phase`: what a backend's run fills (trained trials, or plans scored on a lower halving rung).
- `study_points`: every completed trial as a `ParetoPoint`, whichever backend ran it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.trial import FrozenTrial, TrialState

from cubesearch.core.errors import CubesearchError, one_line
from cubesearch.core.redact import mask_secrets, mask_url
from cubesearch.search.pareto import ParetoPoint

# A plan over budget is rejected by the cost model in microseconds, so `--trials` counts trained
# trials only; this many rejections per wanted trial end a search whose budget the space can
# hardly meet (with a message) instead of letting it sample forever.
MAX_REJECTIONS_PER_TRIAL = 25
# The user attribute that marks a plan trained only to a lower halving rung: a proxy, not a model of the front
SCORED = "scored"
RUNG = "rung"  # the halving rung a trial was trained to (0 = the first)
# A queued plan's narrowed convs (conv → kept fraction; `Plan.widths`): the study's parameters
# say only which sites are Cube blocks (the site map's finalists and pruning plans carry these)
WIDTHS = "widths"
FINALIST = "map_finalist"  # a queued site-map finalist's index in the stored list
PRUNED = "pruning_plan"  # a queued uniform-pruning plan's index
# What a queued plan is enqueued with (what it is, not what its run found): a trial whose worker
# died is queued again with these, or it would come back as another plan (no widths, no rung).
QUEUED_ATTRS = ("reference", "promotes", RUNG, WIDTHS, FINALIST, PRUNED, "predicted_iou",
                "pruning_ratio")
# Figures of the trainer's evaluation recorded with a fine-tuned trial (all are in metrics.json)
RECORDED_METRICS = ("f1", "precision", "recall", "oa", "loss")
# User attributes a point carries besides its objectives (and each halving rung's `iou_rungN`)
POINT_EXTRAS = frozenset({"seconds", "latency", "rung_epochs", "predicted_iou",
                          "pruning_ratio",
                          *RECORDED_METRICS[:-1]})
# User attributes a trial's record sets itself; an evaluator's figures may not overwrite them
RESERVED_ATTRS = frozenset({"iou", "seconds", "checkpoint", "plan", "sites_replaced", "gflops_estimate",
                            "constraint", "feasible", "infeasible", "reference", "fail_reason",
                            "trial", "backend", "ray_experiment", "ray_trial_id", SCORED,
                            RUNG, "promotes", WIDTHS})


def queued_attrs(user_attrs: dict[str, Any]) -> dict[str, Any]:
    """The attributes a trial was queued with (`QUEUED_ATTRS`), to queue its plan again."""
    return {k: user_attrs[k] for k in QUEUED_ATTRS if k in user_attrs}


# --- storage ----------------------------------------------------------------------------------


def heartbeat() -> tuple[int, int]:
    """(interval, grace) seconds for Optuna's heartbeat; env CUBESEARCH_HEARTBEAT="1,3" for tests."""
    raw = os.environ.get("CUBESEARCH_HEARTBEAT", "10,30")
    interval, grace = (int(v) for v in raw.split(","))
    return interval, grace


def open_storage(url: str, *, heartbeat_: bool = True, create: bool = True) -> RDBStorage:
    """An Optuna RDB storage at `url`; a `CubesearchError` saying why not.

    With `heartbeat_`, trials of a process that died are failed after a grace period and retried
    (twice). `create`: make a SQLite file's folder. Several processes creating one fresh shared
    database race to create Optuna's schema; the loser opens it again once the winner is done.
    """
    if create and url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {
        "engine_kwargs": None if url.startswith("sqlite") else {"pool_pre_ping": True}}
    if heartbeat_:
        interval, grace = heartbeat()
        options.update(heartbeat_interval=interval, grace_period=grace)
    attempts = 5
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; we rely on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = RetryFailedTrialCallback(max_retry=2) if heartbeat_ else None
                return RDBStorage(url, failed_trial_callback=retry, **options)
        except (ImportError, ModuleNotFoundError) as exc:
            raise CubesearchError(f"storage {mask_url(url)!r} needs a database driver: {exc}") from None
        except Exception as exc:  # sqlalchemy OperationalError and friends
            racing = "duplicate key" in str(exc) or "already exists" in str(exc)
            if racing and attempt < attempts - 1:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise CubesearchError(f"cannot open storage {mask_url(url)!r}: "
                                  f"{mask_secrets(one_line(exc))}") from None
    raise AssertionError("unreachable")


# --- one trial's outcome ----------------------------------------------------------------------


def fail_reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()[:500]}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class TrialOutcome:
    """What evaluating one plan gives: its IoU, its measured costs, where its checkpoint is."""

    iou: float
    costs: dict[str, float]  # cost objective → measured value (gflops, params, …)
    seconds: float = 0.0
    checkpoint: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # more figures to record (f1, loss…)

    def __post_init__(self) -> None:
        if not _number(self.iou) or not math.isfinite(float(self.iou)):
            raise CubesearchError(f"the trial's IoU is not a finite number: {self.iou!r}")

    @property
    def gflops(self) -> float:
        return float(self.costs["gflops"])

    @property
    def params(self) -> int:
        return int(self.costs["params"])

    def values(self, objectives: Sequence[str]) -> tuple[float, ...]:
        """The objective values Optuna is told, in the study's order."""
        return tuple(float(self.iou) if o == "iou" else float(self.costs[o]) for o in objectives)

    def to_user_attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {k: float(v) for k, v in self.metrics.items()
                                 if _number(v) and k not in RESERVED_ATTRS}
        attrs.update(self.costs)
        attrs.update(iou=float(self.iou), seconds=float(self.seconds))
        if self.checkpoint is not None:
            attrs["checkpoint"] = self.checkpoint
        return attrs

    @classmethod
    def from_user_attrs(cls, attrs: Mapping[str, Any], cost_names: Sequence[str] = ("gflops", "params")
                        ) -> TrialOutcome:
        costs = {k: attrs[k] for k in cost_names if k in attrs}
        metrics = {k: float(v) for k, v in attrs.items()
                   if _number(v) and k not in RESERVED_ATTRS and k not in costs}
        return cls(iou=float(attrs["iou"]), costs=costs, seconds=float(attrs.get("seconds", 0.0)),
                   checkpoint=attrs.get("checkpoint"), metrics=metrics)

    def to_report(self) -> dict[str, Any]:
        """A dict for Ray Tune's `report`: IoU and costs at the top (Tune checks the objectives
        are there), the other figures under `metrics`."""
        return {"ok": True, "iou": float(self.iou), **self.costs, "seconds": float(self.seconds),
                "checkpoint": self.checkpoint, "metrics": dict(self.metrics)}

    @classmethod
    def from_report(cls, report: Mapping[str, Any], cost_names: Sequence[str]) -> TrialOutcome:
        return cls(iou=float(report["iou"]), costs={k: report[k] for k in cost_names if k in report},
                   seconds=float(report.get("seconds", 0.0)), checkpoint=report.get("checkpoint"),
                   metrics=_nested(report, "metrics"))


def _nested(report: Mapping[str, Any], key: str) -> dict[str, Any]:
    """`report[key]`, also when Tune handed the result over flattened (`key/name` entries)."""
    if isinstance(report.get(key), dict):
        return dict(report[key])
    return {k.split("/", 1)[1]: v for k, v in report.items() if k.startswith(f"{key}/")}


# --- the study's trials -----------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """What one `backend.run` fills: `wanted` trained trials (`scored=False`), or `wanted` plans
    scored, not trained to the end (marked `SCORED` in the study)."""

    name: str = "trials"  # the progress bar's label: trials | scoring | confirming
    wanted: int = 1
    scored: bool = False
    # plans rejected over budget before the phase began: an earlier phase's rejections do not
    # make this one give up
    rejected_before: int = 0
    rung: int | None = None  # a halving rung: its count is the trials recorded at this rung
    queued_only: bool = False  # it trains the queued trials only: done once the queue is empty


@dataclass(frozen=True)
class TrialCounts:
    """The study's finished trials: trained (and evaluated), scored (a lower halving rung),
    rejected over budget, failed."""

    trained: int
    rejected: int
    failed: int
    scored: int = 0
    rungs: tuple[int, ...] = ()  # trials recorded at each halving rung
    waiting: int = 0  # queued, not started

    @classmethod
    def of(cls, study: optuna.Study) -> TrialCounts:
        trained = rejected = failed = scored = waiting = 0
        rungs: dict[int, int] = {}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL,
                                                          TrialState.WAITING)):
            if t.state == TrialState.WAITING:
                waiting += 1
                continue
            if t.state == TrialState.FAIL:
                failed += 1
            elif t.user_attrs.get("infeasible"):
                rejected += 1
            elif t.user_attrs.get(SCORED):
                scored += 1
            else:
                trained += 1
            if t.state == TrialState.COMPLETE and t.user_attrs.get(RUNG) is not None:
                rung = int(t.user_attrs[RUNG])
                rungs[rung] = rungs.get(rung, 0) + 1
        return cls(trained, rejected, failed, scored,
                   tuple(rungs.get(r, 0) for r in range(max(rungs, default=-1) + 1)), waiting)

    def done(self, phase: Phase | None = None) -> int:
        """The phase's count so far: trials at its rung, plans scored, or trials trained (no
        phase: trained)."""
        if phase is not None and phase.rung is not None:
            return self.rungs[phase.rung] if phase.rung < len(self.rungs) else 0
        return self.scored if phase is not None and phase.scored else self.trained

    def gave_up(self, wanted: int, phase: Phase | None = None) -> bool:
        """Short of its trials after so many rejected plans that the search stops."""
        rejected = self.rejected - (phase.rejected_before if phase else 0)
        return self.done(phase) < wanted and rejected >= MAX_REJECTIONS_PER_TRIAL * wanted

    def finished(self, wanted: int, phase: Phase | None = None) -> bool:
        """The search (or `phase`) has its trials, or has given up, or (a phase of queued trials
        only) has none left to run."""
        drained = phase is not None and phase.queued_only and self.waiting == 0
        return drained or self.done(phase) >= wanted or self.gave_up(wanted, phase)

    def all_failed(self) -> bool:
        return self.failed >= 3 and self.trained + self.scored + self.rejected == 0

    def tight_budget_note(self, wanted: int, phase: Phase | None = None) -> str | None:
        if not self.gave_up(wanted, phase):
            return None
        what = "plans scored" if phase is not None and phase.scored else "trials trained"
        return (f"stopped after {self.rejected} plans over budget with {self.done(phase)} of {wanted} "
                f"{what}: the budget is tight for this space; raise --budget or narrow the "
                "space (fewer sites kept, cheaper knobs)")


def first_failure(study: optuna.Study) -> FrozenTrial | None:
    """The study's failed trial with the lowest number, if any."""
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return min(failed, key=lambda t: t.number) if failed else None


def stored_checkpoint(folder: str | os.PathLike, root: str | os.PathLike) -> str:
    """How a trial's checkpoint folder is recorded in the study: absolute, never relative to
    the directory the search happened to run in. Readers re-root it at the study's folder
    (`resolve_checkpoint`: OUT/trials/…), so that folder can be moved, copied or exported from
    anywhere."""
    return str(Path(folder).absolute())


def resolve_checkpoint(stored: str | None, root: str | os.PathLike | None,
                       recorded_out: str | None = None) -> str | None:
    """The folder a recorded checkpoint is in now: `stored` re-rooted at the study's folder
    `root` (OUT/trials/STUDY/trial_N, wherever OUT is now), else as recorded. Studies record it
    absolute; older ones relative to the directory the search ran in (`recorded_out/trials/…`),
    and a path relative to `root` is understood too."""
    if not stored:
        return stored
    path = Path(stored)
    candidates = [] if path.is_absolute() or root is None else [Path(root) / path]
    if root is not None:
        if recorded_out and not path.is_absolute():
            with contextlib.suppress(ValueError):
                candidates.append(Path(root) / path.relative_to(Path(recorded_out)))
        if "trials" in path.parts:  # OUT/trials/STUDY/trial_NNNN wherever OUT was
            candidates.append(Path(root) / Path(*path.parts[path.parts.index("trials"):]))
    candidates.append(path)  # absolute, or relative to where this process runs (old studies)
    found = next((c for c in candidates if (c / "plan.json").is_file()), candidates[0])
    return str(found)


def study_points(study: optuna.Study, root: str | os.PathLike | None = None, *,
                 scored: bool = False) -> list[ParetoPoint]:
    """Every completed trial as a point (user attributes are the record, whichever backend ran it).
    `root`: the study's folder (the search's --out), which checkpoint paths are relative to.
    `scored`: the plans scored only (a halving search's lower rungs: its cloud) instead of the trained
    trials (the front, the table, export)."""
    points = []
    recorded_out = (study.user_attrs.get("settings") or {}).get("out")
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = dict(t.user_attrs)
        if "iou" not in a or bool(a.get(SCORED)) != scored:
            continue
        if a.get("checkpoint"):
            a["checkpoint"] = resolve_checkpoint(a["checkpoint"], root, recorded_out)
        points.append(ParetoPoint(
            trial=t.number, iou=float(a["iou"]), gflops=float(a["gflops"]), params=int(a["params"]),
            sites_replaced=int(a.get("sites_replaced", 0)), sites_narrowed=len(a.get(WIDTHS) or {}),
            label=a.get("reference", ""),
            feasible=bool(a.get("feasible", True)) and not a.get("infeasible", False),
            plan_path=a.get("checkpoint") and str(Path(a["checkpoint"]) / "plan.json"),
            checkpoint=a.get("checkpoint"),
            extra={k: a[k] for k in a if k in POINT_EXTRAS or k.startswith("iou_rung")}))
    return points
