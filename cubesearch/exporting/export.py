"""`cubesearch.export`: the chosen models of a study, ready to fine-tune or deploy.

One folder per model — `plan.json`, `model.safetensors`, `metrics.json`, `model.onnx` (checked
against onnxruntime), optional `model.torchscript.pt`, a `README.md` model card, and
`manifest.json` (size and SHA-256 of every file, which `cubesearch.load` verifies) — written to a
temporary folder and renamed into place, so an interrupted export leaves no half-written model.
An index at the top: `pareto.csv`, `pareto.md`, `pareto.png`, `pareto.html`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from cubesearch.blocks import fold_blocks
from cubesearch.core.errors import CubesearchError
from cubesearch.core.redact import mask_url
from cubesearch.cost.budget import parse_flops, resolve_budget
from cubesearch.cost.deploy import MAX_OPSET, ONNX_OPSET, fold_error, onnx_check, write_onnx
from cubesearch.cost.pricing import count_flops
from cubesearch.plan.checkpoint import check_destination, load, save, write_manifest
from cubesearch.plan.plan import Plan
from cubesearch.search.context import baseline_dir as search_baseline_dir
from cubesearch.search.pareto import ParetoPoint, non_dominated, plot_pareto, sites_text
from cubesearch.search.record import open_storage, study_points
from cubesearch.search.settings import SearchSettings, study_train_options
from cubesearch.training.finetune import Recipe, finetune, recorded_baseline

FORMATS = ("safetensors", "onnx", "torchscript")
# What a model trained by the final recipe adds to its metrics, row and card
FINAL_KEYS = ("proxy_iou", "final_iou", "paired_baseline_iou", "delta_iou_vs_paired")


# --- opening a study ------------------------------------------------------------------------


def open_study_source(source: str | Path, study_name: str | None = None):
    """A study from a search's `--out` folder (its study.db) or an Optuna storage URL."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    text = str(source)
    if "://" in text:
        url = text
    else:
        folder = Path(text)
        if not folder.exists():
            raise CubesearchError(f"no such study folder: {folder}")
        db = folder / "study.db" if folder.is_dir() else folder
        if not db.exists():
            raise CubesearchError(f"{folder} holds no study.db (give a search --out folder or a "
                                  "storage URL)")
        url = f"sqlite:///{db.resolve()}"
    storage = open_storage(url, heartbeat_=False, create=False)
    names = optuna.get_all_study_names(storage=storage)
    if study_name is None:
        if len(names) != 1:
            raise CubesearchError(f"{mask_url(url)} holds {len(names)} studies "
                                  f"({', '.join(names) or 'none'}); pick one with --study NAME")
        study_name = names[0]
    elif study_name not in names:
        raise CubesearchError(f"no study {study_name!r} in {mask_url(url)} (it has: {', '.join(names)})")
    return optuna.load_study(study_name=study_name, storage=storage)


def study_root(source: str | Path, settings: dict[str, Any]) -> Path | None:
    """The folder a study's checkpoint paths are relative to: the folder holding its study.db
    (wherever it was moved), or for a storage URL the search's --out as recorded."""
    text = str(source)
    if "://" not in text:
        folder = Path(text)
        return (folder if folder.is_dir() else folder.parent).absolute()
    out = settings.get("out")
    return Path(out).absolute() if out else None


# --- choosing models ------------------------------------------------------------------------


def select_points(points: Sequence[ParetoPoint], select: str, objectives: Sequence[str] = ("iou", "gflops")
                  ) -> list[ParetoPoint]:
    """`pareto`, `best-iou`, `under:30GFLOPs` (best IoU at or under that cost), or `trial:N`."""
    trained = [p for p in points if p.checkpoint]
    if select == "pareto":
        chosen = [p for p in non_dominated(trained, objectives)]
    elif select == "best-iou":
        feasible = [p for p in trained if p.feasible]
        chosen = [max(feasible, key=lambda p: (p.iou, -p.gflops))] if feasible else []
    elif select.startswith("under:"):
        baseline = next((p for p in points if p.label == "baseline"), None)
        try:
            limit = parse_flops(select.removeprefix("under:"),
                                baseline.gflops * 1e9 if baseline else None) / 1e9
        except CubesearchError as exc:
            raise CubesearchError(f"--select {select!r}: {exc}") from None
        under = [p for p in trained if p.gflops <= limit]
        if not under:
            cheapest = min((p.gflops for p in trained), default=float("nan"))
            raise CubesearchError(f"no trained model at or under {limit:.3f} GFLOPs "
                                  f"(the cheapest is {cheapest:.3f})")
        chosen = [max(under, key=lambda p: (p.iou, -p.gflops))]
    elif re.fullmatch(r"trial:\d+", select):
        n = int(select.split(":")[1])
        match = [p for p in trained if p.trial == n]
        if not match:
            have = ", ".join(str(p.trial) for p in trained)
            raise CubesearchError(f"trial {n} has no trained model to export (trained: {have})")
        chosen = match
    else:
        raise CubesearchError(f"--select {select!r}: use pareto, best-iou, under:30GFLOPs or trial:N")
    if not chosen:
        raise CubesearchError("no trained, feasible model in the study to export")
    return chosen


# --- one model ------------------------------------------------------------------------------


def model_card(point: ParetoPoint, plan: Any, metrics: dict[str, Any], formats: Sequence[str]) -> str:
    sites = plan.sites if hasattr(plan, "sites") else {}
    lines = [
        f"# {plan.model} — trial {point.trial}", "",
        f"A Cube Kernel variant of `{plan.model}` found by `cubesearch search`: "
        f"{len(sites)} of its 3×3 convs replaced by Cube blocks.", "",
        "| metric | this model | baseline |", "|---|---:|---:|",
    ]
    base_iou, base_gflops = metrics.get("baseline_iou"), metrics.get("baseline_gflops")
    if metrics.get("paired_baseline_iou") is not None:  # trained by the final recipe: like for like
        base_iou = metrics["paired_baseline_iou"]
        lines[-2] = "| metric | this model | paired baseline |"
    lines.append(f"| IoU | {metrics['iou']:.4f} | {base_iou:.4f} |" if base_iou is not None
                 else f"| IoU | {metrics['iou']:.4f} | – |")
    for key in ("f1", "precision", "recall", "oa"):
        if key in metrics:
            lines.append(f"| {key.upper() if key == 'oa' else key.capitalize()} | {metrics[key]:.4f} | |")
    lines.append(f"| GFLOPs (fvcore, {'×'.join(map(str, plan.input_size))}) | {metrics['gflops']:.3f} | "
                 + (f"{base_gflops:.3f} |" if base_gflops is not None else "– |"))
    if "latency" in metrics:  # measured by a search with a latency objective, on its device
        backend = metrics.get("latency_backend", "torch")
        lines.append(f"| latency, ms (measured, deploy form, {backend}, on the profiled device) | "
                     f"{metrics['latency']:.2f} | |")
    if "latency_predicted" in metrics:  # what the latency model priced the plan at
        lines.append(f"| latency, ms (predicted by the latency table) | "
                     f"{metrics['latency_predicted']:.2f} | |")
    lines.append(f"| parameters | {metrics['params']:,} | |")
    lines += final_training_lines(metrics)
    lines += ["", "## Plan", "", "| site | block |", "|---|---|"]
    lines += [f"| `{name}` | {cfg.short()} |" for name, cfg in sites.items()] or ["| (none) | |"]
    lines += ["", "## Load", "", "```python", "import cubesearch",
              "model = cubesearch.load(\"path/to/this/folder\")  # safetensors + JSON, no pickle",
              "```", ""]
    deployed = " / ".join(f"`{name}`" for fmt, name in (("onnx", "model.onnx"),
                                                          ("torchscript", "model.torchscript.pt"))
                          if fmt in formats)  # only the files this export wrote
    if "fold_max_abs_error" in metrics and deployed:
        lines += ["## Deploy", "",
                  f"{deployed} hold{'s' if ' / ' not in deployed else ''} the folded eval form of every Cube "
                  "block (BatchNorms folded, ℛ and the lattice conv as one conv): it matches the "
                  f"training form (eval mode) to {metrics['fold_max_abs_error']:.2e} (max abs, "
                  "random input).", ""]
    if "onnx" in formats:
        lines += [f"`model.onnx` (opset {metrics.get('onnx_opset', '?')}, dynamic batch) run by "
                  "onnxruntime matches the PyTorch training form (eval mode) to "
                  f"{metrics.get('onnx_max_abs_error', float('nan')):.2e} (max abs, random input).",
                  ""]
    return "\n".join(lines)


def final_training_lines(metrics: dict[str, Any]) -> list[str]:
    """The card's proxy IoU → final IoU, beside the paired baseline's final IoU (when the model
    was trained by the final recipe)."""
    final, paired = metrics.get("final_iou"), metrics.get("paired_baseline_iou")
    if final is None:
        return []
    proxy = metrics.get("proxy_iou")
    epochs = next((metrics[k] for k in ("finetune_epochs", "final_epochs", "scheduled_epochs")
                   if metrics.get(k) is not None), None)
    epochs = "?" if epochs is None else f"{epochs:g}"
    ranked_on = ("IoU at the search's first rung (the proxy the plan was ranked on)"
                 if metrics.get("final_source") == "halving" else
                 "IoU in the search (the proxy: a short fine-tune)")
    lines = ["", "## Final training", "",
             f"{ranked_on} "
             f"{'–' if proxy is None else f'{proxy:.4f}'} → final IoU **{final:.4f}**, trained by the "
             f"final recipe for {epochs} epochs (warm start from the baseline, "
             f"{'distillation from it, ' if metrics.get('kd_weight') else ''}annealed to 0, the "
             f"weights of the best validation IoU kept: epoch {metrics.get('best_epoch', '?')})."]
    if paired is not None:
        ratio = f" ({final / paired:.3f}×)" if paired else ""
        lines += ["", f"Paired baseline (the unconverted model trained by the same recipe, epochs "
                      f"and seed): final IoU {paired:.4f}; ΔIoU vs paired **{final - paired:+.4f}**"
                      f"{ratio}."]
    return lines


def study_baseline_dir(points: Sequence[ParetoPoint], root: Path | None, settings: dict[str, Any]
                       ) -> Path:
    """The trained, unconverted baseline a study's trials were warm-started from."""
    if root is not None:
        try:
            folder = search_baseline_dir(SearchSettings.from_record(settings), root)
        except CubesearchError:  # a record older than today's settings
            folder = None
        if folder is not None and (folder / "model.safetensors").is_file():
            return folder
    for p in points:
        found = recorded_baseline(p.checkpoint) if p.checkpoint else None
        if found is not None:
            return found
    raise CubesearchError(f"the study's trained baseline is not found (looked in {root}/baselines "
                          "and the trials' metrics); it is what the final recipe trains from")


def halving_figures(point: ParetoPoint, baseline: ParetoPoint | None) -> dict[str, Any]:
    """A halving search's front is trained already: its top rung is the final recipe, and its
    unconverted reference, trained on alike, the paired baseline. Its figures, as `--finetune`
    records them (the proxy: the first rung's IoU, on which the plan was ranked)."""
    epochs = point.extra.get("rung_epochs")
    if epochs is None or "iou_rung0" not in point.extra:
        return {}
    paired = baseline.iou if baseline is not None and baseline.extra.get("rung_epochs") == epochs else None
    return {"proxy_iou": float(point.extra["iou_rung0"]), "final_iou": point.iou,
            "paired_baseline_iou": paired, "final_epochs": epochs, "final_source": "halving",
            "delta_iou_vs_paired": point.iou - paired if paired is not None else None}


def export_one(point: ParetoPoint, dest: Path, *, formats: Sequence[str], finetune_epochs: float,
               baseline: ParetoPoint | None, settings: dict[str, Any] | None = None,
               progress: bool = False, trust_code: bool = False, fold: bool = True,
               opset: int = ONNX_OPSET, baseline_dir: Path | None = None,
               recipe: Recipe | None = None, paired_cache: Path | None = None) -> dict:
    """One model folder. With `finetune_epochs`, the plan is trained by the final recipe from
    `baseline_dir` first (`cubesearch.training.finetune.finetune`), beside its paired baseline
    (cached in `paired_cache`)."""
    src = Path(point.checkpoint)
    plan = Plan.load(src / "plan.json")
    model = load(src, trust_code=trust_code)
    metrics = json.loads((src / "metrics.json").read_text()) if (src / "metrics.json").exists() else {}
    if finetune_epochs > 0:
        if baseline_dir is None:
            raise CubesearchError("--finetune needs the study's trained baseline (not found)")
        recipe = (recipe or Recipe()).model_copy(update={"epochs": finetune_epochs})
        done = finetune(plan, baseline_dir, recipe=recipe, paired_cache=paired_cache,
                        proxy_iou=point.iou, progress=progress, **study_train_options(settings or {}))
        model = done.result.model
        metrics.update(done.result.metrics, **done.summary(), finetune_epochs=finetune_epochs,
                       recipe=recipe.model_dump())
    else:
        metrics.update(halving_figures(point, baseline))
    model = model.eval()
    metrics.update(
        trial=point.trial, gflops=count_flops(model, plan.input_size) / 1e9,
        params=sum(p.numel() for p in model.parameters()),
        baseline_iou=baseline.iou if baseline else metrics.get("baseline_iou"),
        baseline_gflops=baseline.gflops if baseline else metrics.get("baseline_gflops"),
        baseline_params=baseline.params if baseline else None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        staged = tmp / "model"
        save(staged, model, plan, metrics)
        deployed = model
        if fold and set(formats) & {"onnx", "torchscript"}:
            deployed = fold_blocks(model)
            metrics["fold_max_abs_error"] = fold_error(model, deployed, plan.input_size)
        metrics["deploy_form"] = "folded" if fold else "training"
        if "onnx" in formats:  # written from the deploy form, checked against the training form
            write_onnx(deployed, staged / "model.onnx", plan.input_size, opset=opset)
            metrics["onnx_opset"] = opset
            metrics["onnx_max_abs_error"] = onnx_check(model, staged / "model.onnx", plan.input_size)
        if "torchscript" in formats:
            x = torch.randn(1, *plan.input_size)
            with torch.no_grad():
                torch.jit.trace(deployed, x).save(str(staged / "model.torchscript.pt"))
        (staged / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        (staged / "README.md").write_text(model_card(point, plan, metrics, formats))
        write_manifest(staged)
        if dest.exists():
            old = tmp / "previous"
            dest.rename(old)
        staged.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return metrics


# --- the whole export -----------------------------------------------------------------------


@dataclass
class ExportResult:
    out: Path
    models: list[dict[str, Any]] = field(default_factory=list)
    index: dict[str, str] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None  # `cubesearch calibrate`'s figures, if it ran

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "models": self.models, "index": self.index,
                "calibration": self.calibration}


def export(source: str | Path, *, study: str | None = None, out: str | Path = "exported",
           select: str = "pareto", formats: Sequence[str] = ("safetensors", "onnx"),
           finetune_epochs: float = 0.0, progress: bool = True, console=None,
           trust_code: bool = False, fold: bool = True, opset: int = ONNX_OPSET,
           recipe: Recipe | None = None) -> ExportResult:
    """Export the selected trained models of a study, and write the Pareto index.

    `finetune_epochs`: train each model by the final recipe (`recipe`, its epochs these) from
    the study's baseline first; the paired baseline is trained once per export (cached in
    `out/paired.json`) and every model's `metrics.json`, card and index row carry proxy IoU,
    final IoU and the paired baseline's final IoU.

    ONNX and TorchScript are written from the deploy form (`fold=True`: every Cube block folded,
    `cubesearch.blocks.fold_blocks`), checked against the training form; safetensors always
    hold the training form, to fine-tune or load.

    A study whose model is a model.py or package.module:callable is exported only when that
    file is one your own runs used (same path and SHA-256) or `trust_code=True`
    (`cubesearch.models.trust`)."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or "safetensors" not in formats:
        raise CubesearchError(f"--formats {','.join(formats)!r}: choose from {', '.join(FORMATS)} "
                              "(safetensors is always written)")
    if not finetune_epochs >= 0:
        raise CubesearchError(f"--finetune {finetune_epochs:g}: give epochs ≥ 0 (0: export as trained)")
    if not ONNX_OPSET <= opset <= MAX_OPSET:
        raise CubesearchError(f"--opset {opset}: choose {ONNX_OPSET} … {MAX_OPSET}")
    check_destination(out, option="--out", replaceable=False)
    st = open_study_source(source, study)
    settings = st.user_attrs.get("settings", {})
    objectives = tuple(settings.get("objectives", ("iou", "gflops")))
    points = study_points(st, study_root(source, settings))
    if not points:
        raise CubesearchError(f"study {st.study_name!r} has no completed trial")
    chosen = select_points(points, select, objectives)
    baseline = next((p for p in points if p.label == "baseline"), None)
    base_dir = study_baseline_dir(points, study_root(source, settings), settings) \
        if finetune_epochs > 0 else None
    out = Path(out)
    for p in chosen:  # every destination is checked before any work
        check_destination(out / f"trial_{p.trial:04d}", option="--out")
    created = not out.exists()
    result = ExportResult(out=out, calibration=st.user_attrs.get("calibration"))
    try:
        out.mkdir(parents=True, exist_ok=True)
        for p in chosen:
            dest = out / f"trial_{p.trial:04d}"
            m = export_one(p, dest, formats=formats, finetune_epochs=finetune_epochs,
                           baseline=baseline, settings=settings, progress=progress,
                           trust_code=trust_code, fold=fold, opset=opset, baseline_dir=base_dir,
                           recipe=recipe, paired_cache=out)
            if console is not None:
                paired = m.get("paired_baseline_iou")
                versus = f" vs paired baseline {paired:.4f}" if paired is not None else ""
                console.print(f"exported trial {p.trial} → {dest} (IoU {m['iou']:.4f}{versus}, "
                              f"{m['gflops']:.3f} GFLOPs)")
            result.models.append({"trial": p.trial, "folder": str(dest), "iou": m["iou"],
                                  "gflops": m["gflops"], "params": m["params"],
                                  "onnx_max_abs_error": m.get("onnx_max_abs_error"),
                                  "fold_max_abs_error": m.get("fold_max_abs_error"),
                                  **{k: m[k] for k in (*FINAL_KEYS, "best_epoch") if k in m}})
        staging = Path(tempfile.mkdtemp(prefix=".index.", dir=out))
        try:  # the index is written aside, then each file renamed into place
            staged = write_index(staging, points, chosen, baseline, st.study_name,
                                 settings.get("budget"), objectives,
                                 finals={m["trial"]: m for m in result.models},
                                 calibration=result.calibration)
            result.index = {}
            for key, path in staged.items():
                if Path(path).exists():
                    os.replace(path, out / Path(path).name)
                result.index[key] = str(out / Path(path).name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed export leaves no empty folder behind
        raise
    return result


def _round(value: Any) -> Any:
    return "" if value is None else round(float(value), 6)


def calibration_line(calibration: dict[str, Any] | None) -> str:
    """How well the study's proxy ranks trained models (`cubesearch calibrate`), in one line."""
    if not calibration:
        return ""
    tau, rho, ceiling = (calibration.get(k) for k in ("kendall_tau", "spearman_rho", "seed_kendall_tau"))
    fmt = lambda v: "–" if v is None or v != v else f"{v:.2f}"  # noqa: E731  (NaN: a constant scoring)
    proxy = calibration.get("proxy", "IoU")
    return (f"Calibration: the search's {proxy} ranks {calibration.get('n_plans')} of its plans trained "
            f"{calibration.get('epochs', 0):g} epochs by the final recipe ({calibration.get('n_seeds')} "
            f"seeds) at Kendall τ {fmt(tau)} (Spearman ρ {fmt(rho)}); seed-to-seed τ {fmt(ceiling)}.")


def _budget_gflops(budget: str | None, baseline: ParetoPoint | None,
                   objectives: Sequence[str]) -> float | None:
    """The study's budget in GFLOPs (a relative one is of the unconverted model), if it is one."""
    if not budget:
        return None
    try:
        b = resolve_budget(budget, objectives, base_flops=baseline.gflops * 1e9 if baseline else None)
    except CubesearchError:  # relative, without the baseline (or the latency) in the study
        return None
    return b.value / 1e9 if b.objective == "gflops" else None


def write_index(out: Path, points: Sequence[ParetoPoint], exported: Sequence[ParetoPoint],
                baseline: ParetoPoint | None, study_name: str, budget: str | None,
                objectives: Sequence[str], finals: dict[int, dict[str, Any]] | None = None,
                calibration: dict[str, Any] | None = None) -> dict[str, str]:
    """pareto.csv/.md/.png/.html. `finals`: trial → the final-recipe figures of the models
    trained before export (their rows show proxy → final IoU and the paired baseline's);
    `calibration`: the study's `cubesearch calibrate` figures, printed beside the front."""
    finals = {t: m for t, m in (finals or {}).items() if m.get("final_iou") is not None}
    front = non_dominated(points, objectives)
    rows = []
    references = [p for p in points if p.label in ("baseline", "fullcube")]  # always listed
    for p in sorted({id(p): p for p in [*front, *exported, *references]}.values(),
                    key=lambda p: (p.gflops, -p.iou)):
        rows.append({
            "trial": p.trial, "iou": round(p.iou, 6), "gflops": round(p.gflops, 6), "params": p.params,
            "sites_replaced": p.sites_replaced, "sites_narrowed": p.sites_narrowed,
            "pareto": p in front, "exported": p in exported,
            "label": p.label, "iou_gain": round(p.iou - baseline.iou, 6) if baseline else "",
            "gflops_saving": round(1 - p.gflops / baseline.gflops, 6) if baseline else "",
            "folder": f"trial_{p.trial:04d}" if p in exported else "",
            **{k: _round(finals.get(p.trial, {}).get(k)) for k in FINAL_KEYS[1:]}})
    csv_path, md_path = out / "pareto.csv", out / "pareto.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    budget_gflops = _budget_gflops(budget, baseline, objectives)
    shown = f"{budget} ({budget_gflops:.3f} GFLOPs)" if budget_gflops is not None else budget
    md = [f"# Pareto front of `{study_name}`", "",
          f"Budget: {shown}." if budget else "", "",
          calibration_line(calibration), "",
          "| trial | IoU | ΔIoU | GFLOPs | saving | params | sites | note | folder |"
          + (" final IoU | paired baseline IoU | ΔIoU vs paired |" if finals else ""),
          "|---:|---:|---:|---:|---:|---:|---:|---|---|" + ("---:|---:|---:|" if finals else "")]
    for r in rows:
        gain = f"{r['iou_gain']:+.4f}" if r["iou_gain"] != "" else ""
        saving = f"{r['gflops_saving']:.1%}" if r["gflops_saving"] != "" else ""
        note = ", ".join(x for x in (r["label"], "pareto" if r["pareto"] else "") if x)
        final = [r[k] for k in FINAL_KEYS[1:]]
        sites = sites_text(r["sites_replaced"], r["sites_narrowed"])
        md.append(f"| {r['trial']} | {r['iou']:.4f} | {gain} | {r['gflops']:.3f} | {saving} | "
                  f"{r['params']:,} | {sites} | {note} | {r['folder']} |"
                  + ("".join(f" {'' if v == '' else f'{v:+.4f}' if i == 2 else f'{v:.4f}'} |"
                             for i, v in enumerate(final)) if finals else ""))
    if finals:
        md += ["", "Final IoU: trained by the final recipe (in a halving search's top rung, or "
                   "before export with --finetune), beside the paired baseline (the unconverted "
                   "model trained alike)."]
    md += ["", "![Pareto plot](pareto.png)", ""]
    md_path.write_text("\n".join(md))
    png, html = out / "pareto.png", out / "pareto.html"
    plot_pareto(points, front, png, html, title=f"{study_name}: IoU vs GFLOPs",
                budget_gflops=budget_gflops)
    return {"csv": str(csv_path), "md": str(md_path), "png": str(png), "html": str(html)}
