"""`cubesearch finetune`: a trial's (or exported model's) plan, or a study's chosen plans, trained
by the final recipe, each saved beside its paired baseline's figures.

The proxy IoU a search ranks by is a short fine-tune's; what the user gets is the plan trained by
the final recipe (`cubesearch.training.finetune.Recipe`) from the study's trained baseline. Each
model is judged against its **paired baseline** (the unconverted model trained by the same
recipe, epochs, seed and data), computed once per output folder (`OUT/paired.json`).

`OUT/<name>/` (a checkpoint folder, written whole) carries in its `metrics.json` `final_iou`,
`proxy_iou`, `paired_baseline_iou` and `delta_iou_vs_paired`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cubesearch.core.errors import CubesearchError
from cubesearch.cost.pricing import count_flops
from cubesearch.exporting.export import open_study_source, select_points, study_baseline_dir, study_root
from cubesearch.plan.checkpoint import check_destination, save
from cubesearch.plan.plan import Plan
from cubesearch.search.record import study_points
from cubesearch.search.settings import safe_name, study_train_options
from cubesearch.training.finetune import Recipe, baseline_plan, finetune, recorded_baseline

# Data and task options a checkpoint's metrics.json records (as `train` spells them)
_RECORDED = {"input_size": "input_size", "train_tiles": "train_tiles", "val_tiles": "val_tiles",
             "batch_size": "batch_size", "num_classes": "num_classes", "loss_fn": "loss",
             "optimizer": "optimizer"}


@dataclass
class Job:
    """One model to train by the final recipe."""

    name: str  # its folder under OUT
    plan: Plan
    baseline: Path
    options: dict[str, Any]  # `train`'s data options (data, input_size, tiles, batch, seed…)
    proxy_iou: float | None = None
    source: str | None = None  # the checkpoint it came from


@dataclass
class FinetuneResult:
    out: Path
    models: list[dict[str, Any]] = field(default_factory=list)
    paired: dict[str, Any] | None = None
    recipe: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        paired = {k: v for k, v in (self.paired or {}).items() if k != "history"}
        return {"out": str(self.out), "recipe": self.recipe, "paired_baseline": paired or None,
                "models": self.models}


# --- what to train ----------------------------------------------------------------------------


def _read_metrics(folder: Path) -> dict[str, Any]:
    file = folder / "metrics.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def checkpoint_job(checkpoint: str | Path, *, baseline: str | Path | None = None,
                   **options: Any) -> Job:
    """A trial or exported model folder: its plan, from `baseline` (default: the one it was
    warm-started from, as its metrics record it), on the data it recorded unless `options`
    (`train`'s: data, input_size, train_tiles, val_tiles, batch_size, seed…) say otherwise."""
    folder = Path(checkpoint)
    if not (folder / "plan.json").is_file():
        raise CubesearchError(f"{folder}: not a checkpoint folder (no plan.json); give a trial or "
                              "exported model folder, or a search's --out folder")
    metrics = _read_metrics(folder)
    base = Path(baseline) if baseline is not None else recorded_baseline(folder)
    if base is None:
        source = metrics.get("init_source")
        why = (f"its metrics.json records {source}, which is gone" if source
               else "its metrics.json records none")
        raise CubesearchError(f"{folder}: no baseline to train from ({why}); give --baseline DIR "
                              "(the trained, unconverted model)")
    recorded = {opt: metrics[key] for key, opt in _RECORDED.items() if metrics.get(key) is not None}
    data = metrics.get("data")
    if data == "synthetic" or (data and Path(str(data)).is_dir()):
        recorded["data"] = data
    elif "data" not in options:
        raise CubesearchError(f"{folder} was trained on {data or 'unrecorded data'!r}; give --data "
                              "(synthetic or the dataset folder)")
    if recorded.get("data", options.get("data")) != "synthetic":
        recorded.pop("train_tiles", None)  # a folder's tile counts are its own
        recorded.pop("val_tiles", None)
    # the seed of the baseline (the search's: its synthetic tiles), not the trial's own
    seed = _read_metrics(base).get("seed", metrics.get("seed"))
    if seed is not None:
        recorded["seed"] = int(seed)
    if "input_size" in recorded:
        recorded["input_size"] = tuple(recorded["input_size"])
    proxy = metrics.get("proxy_iou", metrics.get("iou"))
    return Job(name=safe_name(folder.resolve().name), plan=Plan.load(folder / "plan.json"),
               baseline=base, options={**recorded, **options},
               proxy_iou=float(proxy) if proxy is not None else None, source=str(folder))


def study_jobs(source: str | Path, *, study: str | None = None, select: str = "pareto",
               baseline: str | Path | None = None, **options: Any) -> list[Job]:
    """The models `select` picks in a study (`cubesearch.exporting.export.select_points`), from the
    study's baseline, on the study's data and training settings (`options` override them)."""
    st = open_study_source(source, study)
    record = st.user_attrs.get("settings") or {}
    root = study_root(source, record)
    points = study_points(st, root)
    if not points:
        raise CubesearchError(f"study {st.study_name!r} has no completed trial")
    chosen = select_points(points, select, tuple(record.get("objectives", ("iou", "gflops"))))
    base = Path(baseline) if baseline is not None else study_baseline_dir(points, root, record)
    data = {**study_train_options(record), **options}
    return [Job(name=f"trial_{p.trial:04d}", plan=Plan.load(Path(p.checkpoint) / "plan.json"),
                baseline=base, options=data, proxy_iou=p.iou, source=p.checkpoint) for p in chosen]


def jobs_for(target: str | Path, *, study: str | None = None, select: str = "pareto",
             baseline: str | Path | None = None, **options: Any) -> list[Job]:
    """A checkpoint folder (plan.json), or a study (a search's --out folder, a storage URL)."""
    text = str(target)
    if "://" not in text and (Path(text) / "plan.json").is_file():
        if select != "pareto" or study is not None:
            raise CubesearchError(f"--select / --study choose models of a study; {text} is one "
                                  "checkpoint")
        return [checkpoint_job(text, baseline=baseline, **options)]
    if "://" not in text and Path(text).is_dir() and not (Path(text) / "study.db").exists():
        raise CubesearchError(f"{text}: neither a checkpoint folder (plan.json) nor a search's "
                              "--out folder (study.db)")
    return study_jobs(text, study=study, select=select, baseline=baseline, **options)


# --- training them ----------------------------------------------------------------------------


def run_jobs(jobs: Sequence[Job], out: str | Path, *, recipe: Recipe | None = None,
             progress: bool = False, log: Callable[[str], None] | None = None) -> FinetuneResult:
    """Train every job by `recipe` into OUT/<name>, with the paired baseline (once per seed and
    data, cached in OUT/paired.json). Every destination is checked before any work."""
    recipe = recipe or Recipe()
    out = check_destination(out, option="--out", replaceable=False)
    for job in jobs:
        check_destination(out / job.name, option="--out")
        baseline_plan(job.baseline)  # an unconverted, trained checkpoint: refused before any work
    created = not out.exists()
    result = FinetuneResult(out=out, recipe=recipe.model_dump())
    try:
        out.mkdir(parents=True, exist_ok=True)
        for job in jobs:
            if log:
                log(f"{job.name}: {len(job.plan.sites)} Cube sites, {recipe.epochs:g} epochs of the "
                    f"final recipe from {job.baseline}")
            done = finetune(job.plan, job.baseline, recipe=recipe, paired_cache=out,
                            proxy_iou=job.proxy_iou, progress=progress, **job.options)
            model = done.result.model.eval()
            summary = done.summary()
            metrics = {**done.result.metrics, **summary, "source": job.source,
                       "baseline": str(job.baseline), "recipe": recipe.model_dump(),
                       "gflops": count_flops(model, job.plan.input_size) / 1e9,
                       "params": sum(p.numel() for p in model.parameters())}
            save(out / job.name, model, job.plan, metrics)
            result.paired = done.paired
            result.models.append({"name": job.name, "folder": str(out / job.name), "source": job.source,
                                  "sites": len(job.plan.sites), "gflops": metrics["gflops"],
                                  "params": metrics["params"], **summary})
            if log:
                log(f"{job.name}: IoU {_fmt(job.proxy_iou)} → {summary['final_iou']:.4f} (paired "
                    f"baseline {_fmt(summary['paired_baseline_iou'])}) → {out / job.name}")
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed run leaves no empty folder behind
        raise
    return result


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"
