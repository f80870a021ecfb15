"""`cubesearch calibrate STUDY`: does the search's proxy rank the plans as their final training does?

A search ranks plans by a short fine-tune's IoU (the proxy). Calibration trains K of the study's
trained plans — spread over the front's cost range, the unconverted reference among them when
the study has it — by the final recipe (`cubesearch.training.finetune`) under ≥ 2 seeds, and
reports Kendall τ and Spearman ρ of the proxy against the mean final IoU, beside the seed-to-seed
τ of the final IoUs (the ceiling: no proxy ranks better than training itself repeats). The
figures go into the study (user attribute `calibration`) and its `search.json`, where `export`
shows them beside the front.

Resumable: each (plan, seed) is `OUT/calibration/trial_NNNN-seedS.json` once trained (written
atomically); a re-run with the same recipe and data trains only what is missing. Training runs
in this process, also for a study searched on Ray.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cubesearch.data import make_datasets
from cubesearch.errors import CubesearchError
from cubesearch.exporting import open_study_source, study_baseline_dir, study_root
from cubesearch.helpers import atomic_write, file_sha256
from cubesearch.pareto import ParetoPoint, non_dominated
from cubesearch.plan import Plan
from cubesearch.search.record import study_points
from cubesearch.search.settings import study_train_options
from cubesearch.supernet.ranking import kendall_tau, spearman_rho
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
    the study has it."""
    trained = sorted((p for p in points if p.checkpoint and p.feasible), key=lambda p: (p.gflops, p.trial))
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


def calibrate(source: str | Path, *, study: str | None = None, plans: int = 8, seeds: int = 2,
              recipe: Recipe | None = None, out: str | Path | None = None, progress: bool = False,
              log: Callable[[str], None] | None = None, **options: Any) -> CalibrationResult:
    """Train `plans` of the study's plans by `recipe` under `seeds` seeds (resuming what
    `out/calibration/` holds; `out` defaults to the study's folder), rank the proxy against
    them, and record the figures in the study and its `search.json`. `options`: `train`'s
    (device…) over the study's own data settings."""
    if plans < 2:
        raise CubesearchError(f"--plans {plans}: calibration ranks at least 2 plans")
    if seeds < 2:
        raise CubesearchError(f"--seeds {seeds}: at least 2 (the seed-to-seed τ is the ceiling)")
    recipe = recipe or Recipe()
    st = open_study_source(source, study)
    record = st.user_attrs.get("settings") or {}
    root = study_root(source, record)
    home = Path(out) if out is not None else root
    if home is None:
        raise CubesearchError("the study records no --out folder; give --out DIR for the calibration")
    folder = home / FOLDER
    if folder.exists() and not folder.is_dir():
        raise CubesearchError(f"{folder} is a file; calibration keeps its runs in that folder")
    points = study_points(st, root)
    chosen = choose_plans(points, plans, tuple(record.get("objectives", ("iou", "gflops"))))
    baseline = study_baseline_dir(points, root, record)
    data = {**study_train_options(record), **options}
    data_seed = data.pop("seed")
    key = recipe.key(baseline=file_sha256(baseline / "model.safetensors"), data_seed=data_seed,
                     **{k: v for k, v in data.items() if k not in ("progress", "device", "workers")})
    run_seeds = [data_seed + i for i in range(seeds)]
    folder.mkdir(parents=True, exist_ok=True)
    result = CalibrationResult(figures={}, folder=folder)
    datasets = None
    for p in chosen:
        for seed in run_seeds:
            file = folder / f"trial_{p.trial:04d}-seed{seed}.json"
            stored = json.loads(file.read_text()) if file.is_file() else None
            if stored is not None and stored.get("key") == key:
                result.runs.append(stored)
                result.reused += 1
                continue
            if datasets is None:  # one validation set for every plan and seed: the search's
                datasets = make_datasets(
                    data["data"], data["input_size"][1], train_tiles=data.get("train_tiles"),
                    val_tiles=data.get("val_tiles"), seed=data_seed,
                    num_classes=data.get("num_classes") or 1, in_channels=data["input_size"][0],
                    val_split=data.get("val_split"), crops_per_image=data.get("crops_per_image"))
            if log:
                log(f"calibration: trial {p.trial} ({p.gflops:.3f} GFLOPs), seed {seed}: "
                    f"{recipe.epochs:g} epochs of the final recipe")
            r = train_final(Plan.load(Path(p.checkpoint) / "plan.json"), baseline, recipe=recipe,
                            seed=seed, progress=progress, **{**data, "data": datasets})
            run = {"key": key, "trial": p.trial, "seed": seed, "iou": float(r.metrics["iou"]),
                   "proxy_iou": p.iou, "gflops": p.gflops, "label": p.label,
                   "epochs_run": r.metrics.get("epochs"), "best_epoch": r.metrics.get("best_epoch"),
                   "curve": [float(h["val_iou"]) for h in r.history if "val_iou" in h],
                   "seconds": r.metrics.get("seconds")}
            _write_json(file, run)
            result.runs.append(run)
            result.trained += 1
    result.figures = summarize(chosen, result.runs, run_seeds, recipe)
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
            "epochs": recipe.epochs, "recipe": recipe.model_dump(), "proxy": "iou",
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
