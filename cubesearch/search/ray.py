"""The Ray Tune backend: the same search, with trials run by Ray on one machine's cores or a cluster.

`cubesearch search ... --backend ray` runs `RayBackend.run` between the set-up and wrap-up that
every backend shares (`cubesearch.search.driver`); it differs from the local backend only in who
schedules a trial:

- The study is the record, as for the local backend: the same Optuna storage (SQLite in `--out`
  by default, or `--storage URL`), the same user attributes, so `collect_result`, the Pareto table
  and `cubesearch export` work unchanged.
- `CubeOptunaSearch` is Ray Tune's `OptunaSearch` (multi-objective: the study's objectives, e.g.
  metrics iou/gflops with modes max/min) wired to that study. Its define-by-run space
  (`PlanSpace`) is `price_trial`: it samples the plan from the search-space file and prices it
  with the cost model. An over-budget plan is told to the study at once, as infeasible, inside
  `suggest` — it never becomes a Tune trial, so it never occupies a worker. A plan within budget
  becomes a Tune trial whose config carries the trial number and the plan.
- `tune_trial` (the Tune trainable, on a worker) calls the same `evaluate_trial` (the search's
  evaluator) as the local backend and reports its `TrialOutcome`. Exceptions there (NaN loss,
  out of memory…) are reported as a failed result, recorded in the study with their reason; a
  worker that dies (killed, node lost) is retried by Tune's `FailureConfig`.
- Back in the driver, `on_trial_complete` stores the outcome with `record_outcome` and tells
  the study: one Optuna trial per plan, whichever process trained it.
- The context every trial shares (datasets and the baseline's checkpoint folder) reaches workers
  through the Ray object store (`tune.with_parameters`): workers never regenerate data nor retrain
  the baseline. Trial checkpoints are written under `--out`, which on a multi-node cluster must be
  a folder every node sees at the same path (a shared filesystem).
- Ray's experiment folder lives in `OUT/ray/<study>-<k>`. Re-running the same command restores an
  interrupted experiment (`Tuner.can_restore` / `Tuner.restore`): finished trials are kept,
  unfinished ones run again under their Optuna trial number. An experiment that ended normally is
  not restored; if the study still wants trials (a larger `--trials`, a timeout), a new
  experiment `<study>-<k+1>` continues the same study.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState, create_trial

from cubesearch.blocks import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.core.logging import get_logger
from cubesearch.plan.plan import Plan
from cubesearch.search.cluster import connect, require_ray
from cubesearch.search.context import SearchContext
from cubesearch.search.objectives import direction, recorded_costs
from cubesearch.search.progress import SearchProgress
from cubesearch.search.record import (
    RECORDED_METRICS,
    Phase,
    TrialCounts,
    TrialOutcome,
    fail_reason,
    open_storage,
    queued_attrs,
)
from cubesearch.search.settings import SearchSettings
from cubesearch.search.study import RAY_EXPERIMENT_ATTR, make_sampler, stored_trials
from cubesearch.search.trial import evaluate_trial, price_trial, record_outcome

MAX_FAILURES = 2  # retries of a trial whose worker died (Tune's FailureConfig)
DONE_FILE = "cubesearch_done.json"

try:  # Ray is an optional extra; `require_ray` turns its absence into a clear error
    from ray import tune as _tune
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch as _OptunaSearch

    _Stopper: Any = _tune.Stopper
    _Callback: Any = _tune.Callback
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    _OptunaSearch = _Stopper = _Callback = Searcher = object


# --- what the driver shows while Tune runs ---------------------------------------------------


@dataclass
class DriverHooks:
    """Driver-side things that are not pickled with the Tuner: log lines, progress, the target."""

    trials: int
    log: Callable[[str], None]
    update: Callable[[Any, Any], None] = lambda study, trial: None


# experiment path → hooks of the driver running it (absent in a Ray Client driver: then the
# searcher logs to stderr and keeps the target it was pickled with)
_HOOKS: dict[str, DriverHooks] = {}
# experiment path → the searcher Tune is using. The stopper and the callback find it here: Tune
# pickles them in its experiment state apart from the searcher, so after a restore a reference
# they held would point at a stale copy.
_SEARCHERS: dict[str, CubeOptunaSearch] = {}


def _stderr_log(text: str) -> None:
    get_logger(__name__).info(text)


# --- the searcher -------------------------------------------------------------------------------


class PlanSpace:
    """OptunaSearch's define-by-run space: sample the plan from the space file and price it.

    Returns Tune's config for the trial: its Optuna number and the plan; `infeasible_values` is
    set when the plan is over budget (the searcher then tells the study and asks again).
    """

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx

    def __call__(self, trial: Any) -> dict[str, Any]:
        sites_cfg, values = price_trial(self.ctx, trial)
        return {"trial_number": trial.number, "promotes": trial.user_attrs.get("promotes"),
                "plan": {name: cfg.to_dict() for name, cfg in sites_cfg.items()},
                "infeasible_values": list(values) if values is not None else None}


class CubeOptunaSearch(_OptunaSearch):
    """`OptunaSearch` on the cubesearch study, with the cost-model pre-check in `suggest`.

    Lives in the driver. Pickled with the Tuner (for `Tuner.restore`) without its study handle;
    `save`/`restore` keep only which Tune trial is which Optuna trial.
    """

    def __init__(self, ctx: SearchContext, experiment: str) -> None:
        s = ctx.settings
        self._ctx = replace(ctx, datasets=None)  # the driver needs no data: sites, costs, budget
        self._experiment = experiment
        self._live: dict[str, int] = {}  # Tune trial id → Optuna storage trial id
        self._retries: dict[str, int] = {}
        self._count_cache: tuple[float, int, int, bool] | None = None
        self._orphans_checked = False
        storage = open_storage(s.storage_url(), heartbeat_=False)  # Ray tracks liveness
        sampler = self._new_sampler(stored_trials(storage, s.study_name()))
        super().__init__(space=PlanSpace(self._ctx), metric=list(s.objectives),
                         mode=["max" if direction(o) == "maximize" else "min" for o in s.objectives],
                         sampler=sampler, study_name=s.study_name(), storage=storage)
        _SEARCHERS[experiment] = self

    # -- pickling: no database handles, no Trial objects --

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_ot_study=None, _sampler=None, _storage=None, _ot_trials={})
        return state

    # The searcher's own state is JSON: restoring it never unpickles what the experiment folder
    # holds. (Ray Tune's own experiment state, which `Tuner.restore` reads, is pickled by Ray:
    # a search resumes only experiments under its own --out, which this user's runs wrote.)

    def save(self, checkpoint_path: str) -> None:
        state = {"version": 1, "live": {str(k): int(v) for k, v in self._live.items()},
                 "completed": sorted(str(t) for t in self._completed_trials),
                 "retries": {str(k): int(v) for k, v in self._retries.items()}}
        with open(checkpoint_path, "w") as f:
            json.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        try:
            with open(checkpoint_path) as f:
                state = json.load(f)
            live = {str(k): int(v) for k, v in state["live"].items()}
            completed = {str(t) for t in state["completed"]}
            retries = {str(k): int(v) for k, v in state["retries"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            # not this format (an older, pickled state is not read): start from the study; its
            # running trials that Tune no longer knows are failed and queued again (_fail_orphans)
            live, completed, retries = {}, set(), {}
        self._live = live
        self._completed_trials = completed
        self._retries = retries
        self._ot_trials = {}
        self._orphans_checked = False
        _SEARCHERS[self._experiment] = self  # the one Tune restored and uses from now on

    def _new_sampler(self, offset: int):
        s = self._ctx.settings
        # a resumed search must not replay the first run's random stream (as the local backend)
        return make_sampler(s.sampler, s.seed + offset, s.trials)

    def _study(self) -> optuna.Study:
        if self._ot_study is None:
            s = self._ctx.settings
            storage = open_storage(s.storage_url(), heartbeat_=False)
            self._sampler = self._new_sampler(stored_trials(storage, s.study_name()))
            self._ot_study = optuna.load_study(study_name=s.study_name(), storage=storage,
                                               sampler=self._sampler)
            self._storage = storage
        study = self._ot_study
        _SEARCHERS[self._experiment] = self
        for tune_id, storage_id in self._live.items():
            if tune_id not in self._ot_trials:
                self._ot_trials[tune_id] = optuna.Trial(study, storage_id)
        if not self._orphans_checked:
            self._orphans_checked = True
            self._fail_orphans(study)
        return study

    def _fail_orphans(self, study) -> None:
        """Optuna trials this `--out`'s Ray runs started but Tune no longer knows (the driver died
        before Tune saved them): failed, so the study has no trial left running for ever."""
        root = str(Path(self._experiment).parent)
        live = set(self._live.values())
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            where = str(t.user_attrs.get(RAY_EXPERIMENT_ATTR, ""))
            if where and str(Path(where).parent) == root and t._trial_id not in live:
                # killed after `ask` but before its plan was wholly sampled (`plan` is recorded
                # right after): there is no plan to retry, only part of one
                again = queued_attrs(t.user_attrs)
                retry = bool(again) or "plan" in t.user_attrs
                study._storage.set_trial_user_attr(
                    t._trial_id, "fail_reason", "interrupted: the Ray driver stopped before "
                    "Tune saved this trial; " + ("its plan is queued again" if retry else
                                                 "it had no plan yet, nothing to queue again"))
                study.tell(t.number, state=TrialState.FAIL)
                if retry:  # retried, as the local backend retries trials its heartbeat finds stale
                    study.enqueue_trial(t.params, user_attrs=again, skip_if_exists=False)

    # -- the target: --trials complete trials in the study --

    def _hooks(self) -> DriverHooks | None:
        return _HOOKS.get(self._experiment)

    def target(self) -> int:
        hooks = self._hooks()
        return hooks.trials if hooks else self._phase().wanted

    def _phase(self) -> Phase:
        assert self._ctx.phase is not None
        return self._ctx.phase

    def _log(self, text: str) -> None:
        hooks = self._hooks()
        (hooks.log if hooks else _stderr_log)(text)

    def _counts(self, fresh: bool = False) -> TrialCounts:
        """The study's trained / rejected / failed trials, cached for a second."""
        now = time.monotonic()
        if fresh or self._count_cache is None or now - self._count_cache[0] > 1.0:
            self._count_cache = (now, TrialCounts.of(self._study()))
        return self._count_cache[1]

    def should_stop(self) -> bool:
        counts = self._counts()
        return counts.all_failed() or (counts.finished(self.target(), self._phase())
                                        and not self._live)

    # -- Tune's Searcher interface --

    def suggest(self, trial_id: str) -> dict | None:
        study = self._study()
        while True:
            counts = self._counts()
            all_failed = counts.all_failed()
            if all_failed or counts.done(self._phase()) + len(self._live) >= self.target() or (
                    counts.finished(self.target(), self._phase())):
                # Nothing more to start. With no trial running, say so: Tune would otherwise wait
                # (up to 10 minutes) for a suggestion; with some running, wait for them.
                return Searcher.FINISHED if all_failed or not self._live else None
            self._ot_trials[trial_id] = self._ask(study)
            config = super().suggest(trial_id)  # define-by-run (PlanSpace) on that trial
            ot_trial = self._ot_trials[trial_id]
            values = config.pop("infeasible_values", None)
            if values is not None:  # over budget: finished here, no worker involved
                study.tell(ot_trial, values, state=TrialState.COMPLETE)
                del self._ot_trials[trial_id]
                self._counts(fresh=True)
                self._after_tell(ot_trial._trial_id)
                continue
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            self._live[trial_id] = ot_trial._trial_id
            return config

    def _ask(self, study):
        """`study.ask()`, with the trial marked as this experiment's from its creation on, so that
        a driver killed at any moment leaves no trial it cannot recognise as its own."""
        tags = {"backend": "ray", RAY_EXPERIMENT_ATTR: self._experiment}
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial = study.ask()  # a queued reference (or someone's enqueued plan) first
            for key, value in tags.items():
                trial.set_user_attr(key, value)
            return trial
        template = create_trial(state=TrialState.RUNNING, user_attrs=tags)
        return optuna.Trial(study, study._storage.create_new_trial(study._study_id, template))

    def note_retry(self, trial_id: str) -> None:
        self._retries[trial_id] = self._retries.get(trial_id, 0) + 1
        number = self._ot_trials[trial_id].number if trial_id in self._ot_trials else "?"
        self._log(f"trial {number}: its worker died; Ray retries it "
                  f"(retry {self._retries[trial_id]} of {MAX_FAILURES})")

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # one result per trial, handled at completion

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False
                          ) -> None:
        study = self._study()
        ot_trial = self._ot_trials.pop(trial_id, None)
        self._live.pop(trial_id, None)
        if ot_trial is None or trial_id in self._completed_trials:
            return
        self._completed_trials.add(trial_id)
        if study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            return  # told before the driver restarted
        retries = self._retries.pop(trial_id, 0)
        if retries:
            ot_trial.set_user_attr("ray_retries", retries)
        if result and result.get("ok"):
            values = record_outcome(self._ctx, ot_trial, TrialOutcome.from_report(
                result, recorded_costs(self._ctx.settings.objectives)))
            for key, attr in (("node_ip", "ray_node"), ("pid", "ray_pid")):
                if key in result:
                    ot_trial.set_user_attr(attr, result[key])
            study.tell(ot_trial, values, state=TrialState.COMPLETE)
        else:
            if result and result.get("fail_reason"):
                reason = result["fail_reason"]
            elif error:
                reason = f"Ray worker failed {retries + 1} times (see {self._experiment})"
            else:
                reason = "stopped by Ray Tune before it finished"
            ot_trial.set_user_attr("fail_reason", reason)
            study.tell(ot_trial, state=TrialState.FAIL)
        self._counts(fresh=True)
        self._after_tell(ot_trial._trial_id)

    def _after_tell(self, storage_id: int) -> None:
        study = self._ot_study
        frozen = study._storage.get_trial(storage_id)
        number, a = frozen.number, frozen.user_attrs
        if frozen.state.name == "FAIL":
            self._log(f"[yellow]trial {number} failed: {a.get('fail_reason', 'unknown error')}"
                      "[/yellow]")
        elif a.get("infeasible"):
            self._log(f"trial {number}: over budget ({a.get('gflops_estimate', 0):.3f} GFLOPs), "
                      "rejected without training")
        else:
            where = f" on {a['ray_node']}" if "ray_node" in a else ""
            self._log(f"trial {number}: IoU {a.get('iou', math.nan):.4f}, "
                      f"{a.get('gflops', math.nan):.3f} GFLOPs, {a.get('seconds', 0):.1f} s{where}")
        hooks = self._hooks()
        if hooks:
            hooks.update(study, frozen)


class TargetStopper(_Stopper):
    """Ends the experiment once the study has its trials (or every trial fails)."""

    def __init__(self, experiment: str) -> None:
        self.experiment = experiment

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        searcher = _SEARCHERS.get(self.experiment)
        return searcher is not None and searcher.should_stop()


class RetryRecorder(_Callback):
    """Counts retries of trials whose worker died, for the study's record and the log."""

    def __init__(self, experiment: str) -> None:
        self.experiment = experiment

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        searcher = _SEARCHERS.get(self.experiment)
        if searcher is not None:
            searcher.note_retry(trial.trial_id)


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.config.get('trial_number', 0):04d}_{trial.trial_id}"


# --- the trainable: one trial on a worker ---------------------------------------------------


def tune_trial(config: dict[str, Any], ctx: SearchContext | None = None, cwd: str | None = None
               ) -> None:
    """Tune's trainable: `evaluate_trial` on the plan in `config`; reports one result."""
    import torch
    from ray import tune

    if cwd and Path(cwd).is_dir():
        os.chdir(cwd)  # relative model paths as the driver sees them (Tune chdirs to trial dirs)
    assert ctx is not None and ctx.datasets is not None, "the context comes with its datasets"
    torch.set_num_threads(max(1, int(ctx.settings.cpus_per_trial)))
    number = int(config["trial_number"])
    sites_cfg = {name: CubeConfig.from_dict(d) for name, d in config["plan"].items()}
    failed = {o: math.nan for o in ctx.settings.objectives}
    if ctx.baseline_dir is not None and not (Path(ctx.baseline_dir) / "model.safetensors").exists():
        tune.report({**failed, "ok": False, "fail_reason": (
            f"the baseline checkpoint {ctx.baseline_dir} is not visible on {socket.gethostname()}: "
            "--out must be a folder every node of the cluster sees at the same path")})
        return
    try:
        outcome = saved_result(ctx, sites_cfg, number) or evaluate_trial(
            ctx, sites_cfg, number, config.get("promotes"))
    except Exception as exc:  # recorded in the study as a failed trial; the search goes on
        tune.report({**failed, "ok": False, "fail_reason": fail_reason(exc)})
        return
    tune.report(outcome.to_report())


def saved_result(ctx: SearchContext, sites_cfg: dict[str, CubeConfig], number: int
                 ) -> TrialOutcome | None:
    """The outcome from the trial's checkpoint, if that plan was already evaluated and saved
    (checkpoints are written atomically): a trial that Ray runs again after the driver
    restarted, or whose worker died after saving, is not trained twice."""
    folder = ctx.trial_dir(number)
    try:
        plan = Plan.load(folder / "plan.json")
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError, CubesearchError):
        return None
    costs = recorded_costs(ctx.settings.objectives)
    if plan.model != ctx.settings.model or dict(plan.sites) != sites_cfg or not (
            folder / "model.safetensors").exists() or not {"iou", *costs} <= metrics.keys():
        return None
    recorded = metrics.get("recorded_metrics", RECORDED_METRICS)
    return TrialOutcome(iou=float(metrics["iou"]), costs={k: metrics[k] for k in costs},
                        seconds=float(metrics.get("seconds", 0.0)), checkpoint=str(folder),
                        metrics={k: float(metrics[k]) for k in recorded if k in metrics})


def check_resources(settings: SearchSettings) -> dict[str, float]:
    """The cluster's resources; an error if one trial's request fits on no node."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    where = settings.address or "this machine (a local Ray instance)"
    for key, want, flag in (("CPU", settings.cpus_per_trial, "--cpus-per-trial"),
                            ("GPU", settings.gpus_per_trial, "--gpus-per-trial")):
        largest = max((float(n.get(key, 0)) for n in nodes), default=0.0)
        if want > 0 and want > largest + 1e-9:
            raise CubesearchError(
                f"{flag} {want:g} is more than any node of the Ray cluster at {where} has: the "
                f"largest node has {largest:g} {key}s (the cluster {float(total.get(key, 0)):g} "
                f"{key}s on {len(nodes)} node{'s' if len(nodes) != 1 else ''})")
    return {"CPU": float(total.get("CPU", 0)), "GPU": float(total.get("GPU", 0)),
            "nodes": float(len(nodes))}


def default_concurrency(settings: SearchSettings, resources: dict[str, float]) -> int:
    fits = resources["CPU"] // settings.cpus_per_trial
    if settings.gpus_per_trial > 0:
        fits = min(fits, resources["GPU"] // settings.gpus_per_trial)
    return max(1, int(fits))


# --- the experiment folder: restore or start ------------------------------------------------


def experiment_dirs(out: Path, study_name: str) -> list[Path]:
    """This study's Ray experiments under OUT/ray, oldest first."""
    root = out / "ray"
    found = []
    for p in root.glob(f"{study_name}-*"):
        suffix = p.name[len(study_name) + 1:]
        if p.is_dir() and suffix.isdigit():
            found.append((int(suffix), p))
    return [p for _, p in sorted(found)]


def experiment_name(ctx: SearchContext) -> str:
    """The study's folder name: the Ray experiment's."""
    assert ctx.phase is not None
    return ctx.settings.study_folder()


def _experiment_to_resume(out: Path, study_name: str) -> tuple[Path, bool]:
    """(experiment folder, restore it?): the latest unfinished one, or a new one."""
    from ray.tune import Tuner

    dirs = experiment_dirs(out, study_name)
    if dirs and not (dirs[-1] / DONE_FILE).exists() and Tuner.can_restore(str(dirs[-1])):
        return dirs[-1], True
    k = int(dirs[-1].name.rsplit("-", 1)[1]) + 1 if dirs else 1
    return out / "ray" / f"{study_name}-{k}", False


# --- the search -----------------------------------------------------------------------------


class RayBackend:
    """Ray Tune schedules the trials: `session` connects to Ray, `run` runs the Tuner."""

    name = "ray"

    def __init__(self) -> None:
        self.resources: dict[str, float] = {}

    @contextlib.contextmanager
    def session(self, settings: SearchSettings) -> Iterator[SearchSettings]:
        """Ray connected (cluster problems first: they take seconds to find) for the search."""
        ray = require_ray()
        # Tune's console output would interleave with ours: ours says what matters, Ray's
        # experiment folder keeps the rest. What Ray still prints (worker errors from the raylet…)
        # goes to stderr: stdout carries only the result (one JSON object with --json).
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # Tune saves its experiment state (and our searcher's) at most this often; small state,
        # so often: a driver restart then loses few trials' bookkeeping.
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
        # OptunaSearch warns when the define-by-run space takes over a second: ours writes the
        # plan and its cost to the study (a database write per parameter), slow on a busy disk
        warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space`")
        settings = settings.model_copy(update={"out": str(Path(settings.out).resolve())})
        with contextlib.redirect_stdout(sys.stderr):
            started = connect(settings)
            try:
                self.resources = check_resources(settings)
                yield settings
            finally:
                if started:
                    ray.shutdown()

    def run(self, ctx: SearchContext, study: optuna.Study, view: SearchProgress) -> None:
        settings, phase = ctx.settings, ctx.phase
        assert phase is not None
        exp_dir, restoring = _experiment_to_resume(ctx.out, experiment_name(ctx))
        if (TrialCounts.of(study).done(phase) >= phase.wanted and not restoring) or ctx.out_of_time():
            return
        concurrent = settings.max_concurrent or default_concurrency(settings, self.resources)
        r = self.resources
        view.log(f"ray: {int(r['nodes'])} node(s), {r['CPU']:g} CPUs, {r['GPU']:g} GPUs; "
                 f"{concurrent} trial(s) at once, {settings.cpus_per_trial:g} CPU + "
                 f"{settings.gpus_per_trial:g} GPU each; experiment {exp_dir}"
                 + (" (restored)" if restoring else ""))
        with contextlib.redirect_stdout(sys.stderr):
            grid = _fit(ctx, exp_dir, restoring, concurrent, view)
        if len(grid) - grid.num_terminated - grid.num_errors:  # trials left unfinished
            done = TrialCounts.of(study).done(phase)
            what = "plans scored" if phase.scored else "trials trained"
            raise CubesearchError(
                f"search interrupted with {done} of {phase.wanted} {what}; run the same command "
                f"again to resume ({exp_dir})")
        (exp_dir / DONE_FILE).write_text(json.dumps({"trials_complete": TrialCounts.of(study).done(phase)}))


def _fit(ctx: SearchContext, exp_dir: Path, restoring: bool, concurrent: int,
         view: SearchProgress) -> Any:
    """Run (or restore) the Tuner of experiment `exp_dir`; its ResultGrid."""
    from ray import tune

    settings = ctx.settings
    lock = threading.Lock()

    def update(study: optuna.Study, trial: Any) -> None:
        with lock:
            view.trial_finished(study, trial)

    assert ctx.phase is not None
    _HOOKS[str(exp_dir)] = DriverHooks(trials=ctx.phase.wanted, log=view.log, update=update)
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, ctx=ctx, cwd=os.getcwd()),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    try:
        if restoring:
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=CubeOptunaSearch(ctx, str(exp_dir)),
                                            num_samples=-1, max_concurrent_trials=concurrent,
                                            time_budget_s=ctx.time_left(), reuse_actors=True,
                                            trial_dirname_creator=trial_dirname),
                run_config=tune.RunConfig(
                    name=exp_dir.name, storage_path=str(exp_dir.parent), verbose=0,
                    stop=TargetStopper(str(exp_dir)), callbacks=[RetryRecorder(str(exp_dir))],
                    failure_config=tune.FailureConfig(max_failures=MAX_FAILURES)))
        with view:
            return tuner.fit()
    finally:
        _HOOKS.pop(str(exp_dir), None)
        _SEARCHERS.pop(str(exp_dir), None)
