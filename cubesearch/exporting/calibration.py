"""`cubesearch calibrate STUDY`: does the search's proxy rank the plans as their final training does?

A search ranks plans by a short fine-tune's IoU (the proxy). Calibration trains K of the study's
trained plans — spread over the front's cost range, the unconverted reference among them when
the study has it — by the final recipe (`cubesearch.training.finetune`) under ≥ 2 seeds, and
reports Kendall τ and Spearman ρ of the proxy against the mean final IoU, beside the seed-to-seed
τ of the final IoUs (the ceiling: no proxy ranks better than training itself repeats). The
figures go into the study (user attribute `calibration`) and its `search.json`, where `export`
shows them beside the front.

Resumable: each (plan, seed) is `OUT/calibration/trial_NNNN-seedS.json` once trained (written
atomically by the driver); a re-run with the same recipe and data trains only what is missing.
A study searched on Ray is calibrated on Ray (each run a Ray task, as a trial is); `backend`
says otherwise. A halving study's proxy is its first rung: the pool is that rung's plans.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from cubesearch.core.errors import CubesearchError, one_line
from cubesearch.core.helpers import atomic_write, file_sha256
from cubesearch.exporting.export import open_study_source, study_baseline_dir, study_root
from cubesearch.plan.plan import Plan
from cubesearch.search.cluster import connect, require_ray
from cubesearch.search.pareto import ParetoPoint, non_dominated
from cubesearch.search.record import study_points
from cubesearch.search.settings import SearchSettings, study_train_options
from cubesearch.training.data import make_datasets
from cubesearch.training.finetune import Recipe, train_final

FOLDER = "calibration"
KEY = "calibration"  # the study's user attribute and search.json's key


@dataclass
class CalibrationResult:
    figures: dict[str, Any]  # what the study and search.json record
    folder: Path
    trained: int = 0  # (plan, seed) runs trained by this call; the others were on disk
    reused: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.figures, "folder": str(self.folder), "trained_now": self.trained,
                "reused": self.reused}


def choose_plans(points: Sequence[ParetoPoint], k: int, objectives: Sequence[str] = ("iou", "gflops")
                 ) -> list[ParetoPoint]:
    """K trained plans at evenly spaced GFLOPs over the front's cost range (the nearest plan to
    each target not yet taken; one slot: the cheapest end), the unconverted reference first when
    the study has it. Every trained plan counts, over budget or not: the only trained ones over
    budget are the references, and a tight budget must not drop the unconverted one."""
    trained = sorted((p for p in points if p.checkpoint), key=lambda p: (p.gflops, p.trial))
    if len(trained) < 2:
        raise CubesearchError(f"calibration ranks ≥ 2 trained plans; the study has {len(trained)}")
    k = min(k, len(trained))
    chosen = [p for p in trained if p.label == "baseline"][:1]
    front = non_dominated(trained, objectives) or trained
    lo, hi = min(p.gflops for p in front), max(p.gflops for p in front)
    slots = k - len(chosen)
    targets = [lo + (hi - lo) * i / (slots - 1) for i in range(slots)] if slots > 1 else [lo] * slots
    for target in targets:
        free = [p for p in trained if p not in chosen]
        chosen.append(min(free, key=lambda p: (abs(p.gflops - target), p.trial)))
    return sorted(chosen, key=lambda p: (p.gflops, p.trial))


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b (scipy); NaN, without a warning, when one scoring is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.kendalltau(x, y).statistic)


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ (scipy: the Pearson correlation of average ranks); NaN when one is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(x, y).statistic)


def rank_figures(proxy: Sequence[float], per_seed: Sequence[Sequence[float]]) -> dict[str, Any]:
    """τ and ρ of `proxy` against the mean over seeds, and the mean seed-to-seed τ and ρ."""
    mean = [statistics.fmean(v) for v in zip(*per_seed, strict=True)]
    pairs = list(itertools.combinations(per_seed, 2))
    return {"kendall_tau": _finite(kendall_tau(proxy, mean)),
            "spearman_rho": _finite(spearman_rho(proxy, mean)),
            "seed_kendall_tau": _finite(statistics.fmean(kendall_tau(a, b) for a, b in pairs)),
            "seed_spearman_rho": _finite(statistics.fmean(spearman_rho(a, b) for a, b in pairs))}


def _write_json(path: Path, payload: Any) -> None:
    atomic_write(path, json.dumps(payload, indent=2, default=float))


@dataclass(frozen=True)
class CalibrationRun:
    """One (plan, seed) to train by the final recipe: what a local or a Ray worker needs."""

    trial: int
    seed: int
    plan_file: str
    proxy_iou: float
    gflops: float
    label: str


def train_run(run: CalibrationRun, baseline: str, recipe: Recipe, key: str, data: dict[str, Any],
              progress: bool = False) -> dict[str, Any]:
    """Train one run by the final recipe and return its record (the same wherever it runs).
    `data`: `train`'s options, `data` the datasets themselves or the spec to build them from."""
    r = train_final(Plan.load(run.plan_file), baseline, recipe=recipe, seed=run.seed,
                    progress=progress, **data)
    return {"key": key, "trial": run.trial, "seed": run.seed, "iou": float(r.metrics["iou"]),
            "proxy_iou": run.proxy_iou, "gflops": run.gflops, "label": run.label,
            "epochs_run": r.metrics.get("epochs"), "best_epoch": r.metrics.get("best_epoch"),
            "curve": [float(h["val_iou"]) for h in r.history if "val_iou" in h],
            "seconds": r.metrics.get("seconds"), "pid": os.getpid()}


def shared_datasets(data: dict[str, Any], seed: int) -> Any:
    """The search's datasets, built once (one validation set for every plan and seed)."""
    return make_datasets(
        data["data"], data["input_size"][1], train_tiles=data.get("train_tiles"),
        val_tiles=data.get("val_tiles"), seed=seed, num_classes=data.get("num_classes") or 1,
        in_channels=data["input_size"][0], val_split=data.get("val_split"),
        crops_per_image=data.get("crops_per_image"))


def run_here(pending: Sequence[CalibrationRun], baseline: str, recipe: Recipe, key: str,
             data: dict[str, Any], data_seed: int, progress: bool,
             log: Callable[[str], None] | None) -> Iterator[dict[str, Any]]:
    """The runs in this process, one after the other, on datasets built once."""
    datasets = shared_datasets(data, data_seed) if pending else None
    for run in pending:
        if log:
            log(f"calibration: trial {run.trial} ({run.gflops:.3f} GFLOPs), seed {run.seed}: "
                f"{recipe.epochs:g} epochs of the final recipe")
        yield train_run(run, baseline, recipe, key, {**data, "data": datasets}, progress)


def _train_on_worker(run: CalibrationRun, baseline: str, recipe: Recipe, key: str,
                     data: dict[str, Any], data_seed: int) -> dict[str, Any]:
    """A Ray task: the worker builds the search's datasets itself (the same, by their seed)."""
    return train_run(run, baseline, recipe, key, {**data, "data": shared_datasets(data, data_seed)})


def run_on_ray(pending: Sequence[CalibrationRun], settings: SearchSettings, baseline: str,
               recipe: Recipe, key: str, data: dict[str, Any], data_seed: int,
               log: Callable[[str], None] | None) -> Iterator[dict[str, Any]]:
    """The runs as Ray tasks on the study's cluster (`--address`; each with the study's CPUs and
    GPUs per trial), yielded as they finish: the driver writes each record, so a kill loses at
    most the runs still in flight."""
    if not pending:
        return
    ray = require_ray()
    started = connect(settings)
    try:
        task = ray.remote(num_cpus=settings.cpus_per_trial, num_gpus=settings.gpus_per_trial,
                          max_retries=0)(_train_on_worker)
        refs = {task.remote(run, baseline, recipe, key, data, data_seed): run for run in pending}
        if log:
            log(f"calibration: {len(refs)} runs of {recipe.epochs:g} epochs sent to Ray")
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            run = refs.pop(done[0])
            try:
                yield ray.get(done[0])
            except Exception as exc:  # one run's failure, named; the finished ones are kept
                raise CubesearchError(f"calibration: trial {run.trial}, seed {run.seed} failed on "
                                      f"Ray: {one_line(exc)}") from None
    finally:
        if started:
            ray.shutdown()


def halving_pool(record: dict[str, Any]) -> bool:
    """A halving study ranks plans on its first rung: calibrate that (the lower rungs are its
    scored trials); its front is already trained by the final recipe."""
    return record.get("strategy") == "halving" and len(record.get("rungs") or ()) > 1


def proxy_name(record: dict[str, Any]) -> str:
    if halving_pool(record):
        return f"rung 0 IoU ({float(record['rungs'][0]):g} epochs of the final recipe)"
    return f"trial IoU ({float(record.get('epochs_per_trial', 1.0)):g}-epoch fine-tune)"


def calibrate(source: str | Path, *, study: str | None = None, plans: int = 8, seeds: int = 2,
              recipe: Recipe | None = None, out: str | Path | None = None, progress: bool = False,
              log: Callable[[str], None] | None = None, backend: str | None = None,
              address: str | None = None, **options: Any) -> CalibrationResult:
    """Train `plans` of the study's plans by `recipe` under `seeds` seeds (resuming what
    `out/calibration/` holds; `out` defaults to the study's folder), rank the proxy against
    them, and record the figures in the study and its `search.json`. `backend`: "local" (this
    process) or "ray" (Ray tasks; `address` the cluster); default: the study's own. `options`:
    `train`'s (device…) over the study's own data settings."""
    if plans < 2:
        raise CubesearchError(f"--plans {plans}: calibration ranks at least 2 plans")
    if seeds < 2:
        raise CubesearchError(f"--seeds {seeds}: at least 2 (the seed-to-seed τ is the ceiling)")
    recipe = recipe or Recipe()
    st = open_study_source(source, study)
    record = st.user_attrs.get("settings") or {}
    backend = backend or record.get("backend") or "local"
    if backend not in ("local", "ray"):
        raise CubesearchError(f"--backend {backend!r}: choose local or ray")
    root = study_root(source, record)
    home = Path(out) if out is not None else root
    if home is None:
        raise CubesearchError("the study records no --out folder; give --out DIR for the calibration")
    folder = home / FOLDER
    if folder.exists() and not folder.is_dir():
        raise CubesearchError(f"{folder} is a file; calibration keeps its runs in that folder")
    points = study_points(st, root, scored=halving_pool(record))
    chosen = choose_plans(points, plans, tuple(record.get("objectives", ("iou", "gflops"))))
    baseline = study_baseline_dir(points, root, record)
    data = {**study_train_options(record), **options}
    data_seed = data.pop("seed")
    key = recipe.key(baseline=file_sha256(baseline / "model.safetensors"), data_seed=data_seed,
                     **{k: v for k, v in data.items() if k not in ("progress", "device", "workers")})
    run_seeds = [data_seed + i for i in range(seeds)]
    folder.mkdir(parents=True, exist_ok=True)
    result = CalibrationResult(figures={}, folder=folder)
    pending = []
    for p in chosen:
        for seed in run_seeds:
            file = folder / f"trial_{p.trial:04d}-seed{seed}.json"
            stored = json.loads(file.read_text()) if file.is_file() else None
            if stored is not None and stored.get("key") == key:
                result.runs.append(stored)
                result.reused += 1
                continue
            pending.append(CalibrationRun(p.trial, seed, str(Path(p.checkpoint) / "plan.json"),
                                          p.iou, p.gflops, p.label))
    if backend == "ray":
        ray_settings = SearchSettings.from_record(record, backend="ray",
                                                  address=address or record.get("address"))
        runs = run_on_ray(pending, ray_settings, str(baseline), recipe, key, data, data_seed, log)
    else:
        runs = run_here(pending, str(baseline), recipe, key, data, data_seed, progress, log)
    for run in runs:
        _write_json(folder / f"trial_{run['trial']:04d}-seed{run['seed']}.json", run)
        result.runs.append(run)
        result.trained += 1
    result.figures = {**summarize(chosen, result.runs, run_seeds, recipe),
                      "proxy": proxy_name(record), "backend": backend}
    record_figures(st, root, result.figures)
    return result


def summarize(chosen: Sequence[ParetoPoint], runs: Sequence[dict[str, Any]], seeds: Sequence[int],
              recipe: Recipe) -> dict[str, Any]:
    """The figures a study records: per plan proxy and final IoUs, and the rank agreement."""
    iou = {(r["trial"], r["seed"]): r["iou"] for r in runs}
    per_seed = [[iou[p.trial, s] for p in chosen] for s in seeds]
    rows = [{"trial": p.trial, "label": p.label, "gflops": p.gflops, "proxy_iou": p.iou,
             "final_ious": [iou[p.trial, s] for s in seeds],
             "final_iou": statistics.fmean(iou[p.trial, s] for s in seeds)} for p in chosen]
    reference = next((r for r in rows if r["label"] == "baseline"), None)
    return {"n_plans": len(chosen), "n_seeds": len(seeds), "seeds": list(seeds),
            "epochs": recipe.epochs, "recipe": recipe.model_dump(),
            **rank_figures([p.iou for p in chosen], per_seed),
            "reference_final_iou": reference["final_iou"] if reference else None, "plans": rows}


def record_figures(study: Any, root: Path | None, figures: dict[str, Any]) -> None:
    """The figures into the study's user attributes and its `search.json` (when there is one)."""
    study.set_user_attr(KEY, figures)
    summary = root / "search.json" if root is not None else None
    if summary is not None and summary.is_file():
        payload = json.loads(summary.read_text())
        payload[KEY] = figures
        _write_json(summary, payload)
