"""The Optuna study of a search: sampler, settings check on resume, reference trials."""

from __future__ import annotations

import json
import os

import optuna

from cubesearch.core.errors import CubesearchError
from cubesearch.core.redact import mask_url
from cubesearch.cost.latency.fingerprint import Fingerprint
from cubesearch.search.context import SearchContext
from cubesearch.search.objectives import direction
from cubesearch.search.record import heartbeat, open_storage
from cubesearch.search.settings import SAMPLERS, STUDY_IDENTITY, SearchSettings, flat

DEVICE_ATTR = "device"  # the study's latency device fingerprint
RAY_EXPERIMENT_ATTR = "ray_experiment"  # a trial's Ray experiment folder (search.ray tags it)


def constraints_of(trial: optuna.trial.FrozenTrial) -> list[float]:
    """Optuna constraint: ≤ 0 is feasible. Relative FLOPs over budget."""
    return [float(trial.user_attrs.get("constraint", 0.0))]


def make_sampler(name: str, seed: int, n_trials: int, constrained: bool = True
                 ) -> optuna.samplers.BaseSampler:
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


def check_identity(study: optuna.Study, settings: SearchSettings) -> None:
    """Store the settings with a new study; refuse to resume one started with other settings
    (a setting the stored record lacks counts as its default: it is older than that setting)."""
    stored = study.user_attrs.get("settings")
    mine = json.loads(settings.model_dump_json())
    mine["storage"] = mask_url(mine.get("storage"))  # no password in the study's own record
    if stored is None:
        study.set_user_attr("settings", mine)
        return
    stored, mine = flat(stored), flat(mine)  # training options at the top level, old and new
    # a record older than a setting had its default (older than `strategy`: RECORD_DEFAULT_STRATEGY)
    defaults = flat(json.loads(SearchSettings.from_record({"model": "", "budget": ""}).model_dump_json()))
    changed = [k for k in STUDY_IDENTITY
               if json.dumps(stored.get(k, defaults.get(k))) != json.dumps(mine.get(k))]
    if changed:
        diffs = ", ".join(f"{k}: {stored.get(k, defaults.get(k))!r} → {mine.get(k)!r}" for k in changed)
        raise CubesearchError(f"study {study.study_name!r} in {mask_url(settings.storage_url())} was "
                              f"started with other settings ({diffs}); resume with the same ones or "
                              "pick --study NAME")


def stored_trials(storage: optuna.storages.BaseStorage, name: str) -> int:
    """How many trials the study `name` has in `storage` (0 if there is no such study)."""
    try:
        return storage.get_n_trials(storage.get_study_id_from_name(name))
    except KeyError:
        return 0


def fail_trials_without_heartbeat(study: optuna.Study, grace: float, *, ray: bool = False) -> list[int]:
    """Fail the RUNNING trials that never recorded a heartbeat and started over `grace` seconds
    ago: a process killed between Optuna creating a trial and its first heartbeat leaves one,
    and Optuna's stale-trial check skips trials without a heartbeat, so it would stay RUNNING for
    ever. They are retried like stale ones. Returns their numbers.

    With `ray` (a Ray search resuming), trials a Ray experiment started are left alone: they never
    beat (Ray tracks them), the restored experiment runs them on, and the Ray searcher fails
    those it no longer knows. Failing them here raced with the restore: a trial running longer
    than the grace when the driver died was failed and trained twice."""
    from datetime import datetime, timedelta

    from optuna.storages import RDBStorage
    from optuna.storages._rdb import models  # the heartbeat table; no public reader exists
    from optuna.trial import TrialState

    storage = study._storage
    rdb = getattr(storage, "_backend", storage)  # Optuna wraps the RDB storage in a cache
    if not isinstance(rdb, RDBStorage) or rdb.heartbeat_interval is None:
        return []
    cutoff = datetime.now() - timedelta(seconds=grace)
    old = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
           if t.datetime_start is not None and t.datetime_start < cutoff
           and not (ray and RAY_EXPERIMENT_ATTR in t.user_attrs)]
    if not old:
        return []
    session = rdb.scoped_session()
    try:
        beating = {trial_id for (trial_id,) in session.query(models.TrialHeartbeatModel.trial_id)
                   .filter(models.TrialHeartbeatModel.trial_id.in_([t._trial_id for t in old]))}
    finally:
        rdb.scoped_session.remove()
    failed = []
    callback = rdb.get_heartbeat_stale_trial_callback()
    for t in old:
        if t._trial_id in beating:
            continue  # Optuna's own check fails it once its heartbeat is stale
        try:
            storage.set_trial_user_attr(t._trial_id, "fail_reason", "interrupted before its first "
                                        "heartbeat (the process was killed); its plan is retried")
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process finished it meanwhile
        failed.append(t.number)
        if callback is not None:
            callback(study, storage.get_trial(t._trial_id))
    return failed


def open_study(settings: SearchSettings) -> optuna.Study:
    """Create or load the settings' study. A resumed search, or a second process on a shared
    storage, must not replay the first one's random stream: the sampler's seed is offset by the
    trials already in the study (and by the process id with a shared `--storage`)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(settings.storage_url())
    name = settings.study_name()
    offset = stored_trials(storage, name) + (os.getpid() if settings.storage else 0)
    sampler = make_sampler(settings.sampler, settings.seed + offset, settings.trials)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, load_if_exists=True,
                                directions=[direction(o) for o in settings.objectives])
    check_identity(study, settings)
    fail_trials_without_heartbeat(study, heartbeat()[1], ray=settings.backend == "ray")
    return study


def enqueue_references(study: optuna.Study, ctx: SearchContext) -> None:
    """The unconverted model and the FullCube plan go first: the front always has them to beat."""
    if study.trials:
        return
    fullcube = {s.name: ctx.space.default_config() for s in ctx.searchable}
    study.enqueue_trial(ctx.space.params_for({}, ctx.searchable) if ctx.space.mode != "fullcube"
                        else {}, user_attrs={"reference": "baseline"}, skip_if_exists=False)
    study.enqueue_trial(ctx.space.params_for(fullcube, ctx.searchable),
                        user_attrs={"reference": "fullcube"}, skip_if_exists=False)


def check_study_device(study: optuna.Study, ctx: SearchContext) -> None:
    """Record the study's latency device; refuse to resume on another one unless `--reprofile`
    (its trials' latencies would not compare)."""
    lat = ctx.latency
    if lat is None:
        return
    mine = lat.fingerprint.to_dict()
    stored = study.user_attrs.get(DEVICE_ATTR)
    if stored is None or ctx.settings.reprofile:
        study.set_user_attr(DEVICE_ATTR, mine)
        return
    if Fingerprint.from_dict(stored) != lat.fingerprint:
        diffs = "; ".join(Fingerprint.from_dict(stored).differences(lat.fingerprint))
        raise CubesearchError(
            f"study {study.study_name!r} measured latency on another device ({diffs}); its "
            "trials' latencies would not compare: resume on that device, or add --reprofile to "
            "re-profile here")
