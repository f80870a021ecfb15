"""Is the one-shot search better than the trials search at equal wall-clock time? (issue 17)

Per seed, in one fresh --out (both strategies start from the same trained baseline, trained
first and not timed; nothing else is kept from an earlier run): the one-shot search
(`--strategy oneshot`: supernet training, scoring `--proxy-trials` plans, confirming `--confirm`
plans by training) runs first and its wall time W
is measured, the supernet's training included; then the trials search gets the same W
(`timeout`), training as many plans as fit. Both fronts are made of trained trials only (the
one-shot's confirmed ones). Reported: hypervolume of each front (reference point as in
`benchmarks/search.py`: the baseline's GFLOPs × 1.1, IoU 0), their ratio, and the best
trained IoU under 50% and under 70% of the unconverted model's GFLOPs.

Run: `python benchmarks/oneshot.py --compare [--seeds 3] [--smoke]`; writes
benchmarks/results/oneshot-compare.{md,json}. The target: mean hypervolume one-shot ≥ 1.2× trials.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from _common import machine, md_table  # benchmarks/ is on sys.path when run as a script

from cubesearch.demo import DEMO_TRAINING

TARGET_RATIO = 1.2


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The demo's training (or tiny settings with --smoke), shared by both strategies."""
    if args.smoke:
        return dict(input_size=(3, 64, 64), tile_size=32, train_tiles=16, val_tiles=8,
                    batch_size=8, epochs_per_trial=0.25, baseline_epochs=0.5, distill_steps=2,
                    space="shared")
    return dict(DEMO_TRAINING)


def best_under(points: list[Any], limit_gflops: float) -> float | None:
    ious = [p.iou for p in points if p.feasible and p.gflops <= limit_gflops]
    return max(ious) if ious else None


def finished_within(study: Any, seconds: float) -> set[int]:
    """Trials that completed within `seconds` of the study's first trial: Optuna's timeout
    starts no trial after it but lets the running one finish, so the trials search overruns."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start]
    start = min(t.datetime_start for t in trials)
    return {t.number for t in trials
            if t.datetime_complete and (t.datetime_complete - start).total_seconds() <= seconds}


def time_split(study: Any) -> dict[str, Any]:
    """Where a search's wall time went: the span of its scored plans, the span of its trained
    trials and their median length (the rest of the wall is set-up and the supernet)."""
    from cubesearch.search.record import SCORED

    done = [t for t in study.get_trials(deepcopy=False)
            if t.datetime_complete and not t.user_attrs.get("infeasible")]

    def span(ts: list[Any]) -> float:
        return (max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)
                ).total_seconds() if ts else 0.0

    scored = [t for t in done if t.user_attrs.get(SCORED)]
    trained = [t for t in done if not t.user_attrs.get(SCORED) and "iou" in t.user_attrs]
    lengths = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trained]
    return {"scoring_minutes": span(scored) / 60, "training_minutes": span(trained) / 60,
            "trial_seconds_median": statistics.median(lengths) if lengths else None,
            "score_seconds_median": statistics.median(
                (t.datetime_complete - t.datetime_start).total_seconds() for t in scored)
            if scored else None}


def figures(study: Any, out: Path, wall: float, within: float | None = None) -> dict[str, Any]:
    """The trained points of a finished study; with `within`, only those finished in time
    (the hypervolume compared), all of them under `hv_all`."""
    from cubesearch.pareto import hypervolume, non_dominated
    from cubesearch.search.record import study_points

    everything = study_points(study, out)
    base = next(p for p in everything if p.label == "baseline")  # over budget: not a point
    points = [p for p in everything if p.feasible]
    in_time = finished_within(study, within) if within is not None else {p.trial for p in points}
    trained = [p for p in points if p.trial in in_time]
    ref = base.gflops * 1.1
    return {"wall_minutes": wall / 60, "trained": len(trained), "trained_all": len(points),
            "scored": len(study_points(study, out, scored=True)),
            "hv": hypervolume(trained, ref, 0.0), "hv_all": hypervolume(points, ref, 0.0),
            "front": len(non_dominated(trained)),
            "best_iou_50": best_under(trained, 0.5 * base.gflops),
            "best_iou_70": best_under(trained, 0.7 * base.gflops),
            "baseline_iou": base.iou, "baseline_gflops": base.gflops, **time_split(study)}


def fresh_start(model: str, budget: str, out: Path, common: dict[str, Any]) -> None:
    """Both strategies from nothing but the trained baseline: earlier studies, trials and
    supernets in `out` are removed; the baseline is trained (untimed) if missing."""
    from cubesearch.search import SearchSettings, build_context
    from cubesearch.search.context import ensure_baseline, ensure_datasets

    for path in out.glob("*"):
        if path.name != "baselines":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    ctx = build_context(SearchSettings(model=model, budget=budget, strategy="trials", **common))
    ensure_datasets(ctx)
    ensure_baseline(ctx, progress=False)


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from cubesearch.search import search

    out = Path(args.work) / f"compare{args.compare_tag}-seed{seed}"
    common = dict(out=str(out), seed=seed, **settings(args))
    model = args.tiny if args.smoke else args.model
    fresh_start(model, args.budget, out, common)
    common["progress"] = False
    t0 = time.perf_counter()
    oneshot = search(model, args.budget, strategy="oneshot", study=f"oneshot-seed{seed}",
                     trials=args.confirm, proxy_trials=args.proxy_trials,
                     supernet_epochs=args.sn_epochs, **common)
    wall = time.perf_counter() - t0
    print(f"seed {seed}: one-shot {wall / 60:.1f} min, {oneshot.n_scored} scored, "
          f"{oneshot.n_complete} confirmed", flush=True)
    t0 = time.perf_counter()
    trials = search(model, args.budget, strategy="trials", study=f"trials-seed{seed}",
                    trials=10_000, timeout=wall, **common)
    trials_wall = time.perf_counter() - t0
    print(f"seed {seed}: trials {trials_wall / 60:.1f} min, {trials.n_complete} trained", flush=True)
    return {"seed": seed, "oneshot": figures(oneshot.study, out, wall),
            "trials": figures(trials.study, out, trials_wall, within=wall)}


def recount(args: argparse.Namespace) -> list[dict]:
    """The figures again from the studies a finished run left (its walls from the report)."""
    import optuna

    old = json.loads((Path(args.results) / f"oneshot-compare{args.compare_tag}.json").read_text())
    old = old["per_seed"]
    rows = []
    for row in old:
        seed, out = row["seed"], Path(args.work) / f"compare{args.compare_tag}-seed{row['seed']}"
        storage = f"sqlite:///{out / 'study.db'}"
        wall = row["oneshot"]["wall_minutes"] * 60
        one = optuna.load_study(study_name=f"oneshot-seed{seed}", storage=storage)
        tri = optuna.load_study(study_name=f"trials-seed{seed}", storage=storage)
        rows.append({"seed": seed, "oneshot": figures(one, out, wall),
                     "trials": figures(tri, out, row["trials"]["wall_minutes"] * 60, within=wall)})
    return rows


def _mean(rows: list[dict], strategy: str, key: str) -> float | None:
    values = [r[strategy][key] for r in rows if r[strategy][key] is not None]
    return statistics.mean(values) if values else None


def report(args: argparse.Namespace, rows: list[dict]) -> tuple[str, dict]:
    hv_one, hv_trials = _mean(rows, "oneshot", "hv"), _mean(rows, "trials", "hv")
    ratio = hv_one / hv_trials if hv_trials else None
    data = {"hv_oneshot": hv_one, "hv_trials": hv_trials, "hv_ratio": ratio,
            "seeds": [r["seed"] for r in rows], "wall_minutes": _mean(rows, "oneshot", "wall_minutes"),
            "target_ratio": TARGET_RATIO, "met": ratio is not None and ratio >= TARGET_RATIO,
            "model": args.tiny if args.smoke else args.model, "budget": args.budget,
            "proxy_trials": args.proxy_trials, "confirm": args.confirm,
            "supernet_epochs": args.sn_epochs, "smoke": args.smoke, "per_seed": rows,
            "machine": machine()}

    def cell(v: Any, nd: int = 4) -> str:
        return "–" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)

    table = md_table(
        ["seed", "strategy", "wall (min)", "feasible trained in time (all)", "scored", "hypervolume",
         "hv with overrun", "front", "best IoU ≤ 50% GFLOPs", "best IoU ≤ 70% GFLOPs"],
        [[str(r["seed"]), s, cell(r[s]["wall_minutes"], 1),
          f"{r[s]['trained']} ({r[s]['trained_all']})", str(r[s]["scored"]), cell(r[s]["hv"]),
          cell(r[s]["hv_all"]), str(r[s]["front"]), cell(r[s]["best_iou_50"]),
          cell(r[s]["best_iou_70"])] for r in rows for s in ("oneshot", "trials")])
    split = md_table(
        ["seed", "one-shot wall (min)", "set-up + supernet", "scoring", "confirming",
         "score (s, median)", "confirmed trial (s, median)", "trials' trial (s, median)",
         "a trial costs … scores"],
        [[str(r["seed"]), cell(o["wall_minutes"], 1),
          cell(o["wall_minutes"] - o["scoring_minutes"] - o["training_minutes"], 1),
          cell(o["scoring_minutes"], 1), cell(o["training_minutes"], 1),
          cell(o["score_seconds_median"], 2), cell(o["trial_seconds_median"], 0),
          cell(t["trial_seconds_median"], 0),
          cell(t["trial_seconds_median"] / o["score_seconds_median"], 0)
          if t["trial_seconds_median"] and o["score_seconds_median"] else "–"]
         for r in rows for o, t in [(r["oneshot"], r["trials"])]])
    verdict = ("met" if data["met"] else "not met") if ratio is not None else "not measured"
    text = (f"# One-shot vs trials search at equal wall-clock\n\n"
            f"`{data['model']}`, budget {args.budget}, "
            f"{'smoke settings (checks the pipeline only)' if args.smoke else 'the demo settings'}; "
            f"one-shot: {args.sn_epochs:g} supernet epochs, {args.proxy_trials} scored plans, "
            f"{args.confirm} confirmed; trials: as many as fit in the one-shot's wall time "
            f"(Optuna's timeout lets the running trial finish: trials finished after the one-shot's "
            f"wall are left out of the hypervolume compared and shown under 'hv with overrun').\n\n"
            f"Mean hypervolume: one-shot {cell(hv_one)}, trials {cell(hv_trials)}, ratio "
            f"{cell(ratio, 2)} (target ≥ {TARGET_RATIO}: **{verdict}**).\n\n{table}\n\n"
            f"Where the one-shot's time went (from the studies' trial times; set-up + supernet is "
            f"the rest of its wall), next to the trials search's trial length:\n\n{split}\n\n"
            f"Machine: {data['machine']}.\n")
    return text, data


def write_report(args: argparse.Namespace, rows: list[dict]) -> str:
    text, data = report(args, rows)
    results = Path(args.results)
    name = "oneshot-compare" + ("-smoke" if args.smoke else "") + args.compare_tag
    (results / f"{name}.md").write_text(text)
    (results / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    return text


def compare(args: argparse.Namespace) -> None:
    """Seed after seed; the report is rewritten after each, so an interrupted run keeps the
    seeds it finished. `--compare-recount`: the report again from the studies already run."""
    if args.compare_recount:
        print(write_report(args, recount(args)))
        return
    rows: list[dict] = []
    for seed in range(args.compare_seeds):
        rows.append(one_seed(args, seed))
        text = write_report(args, rows)
    print(text)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--compare", action="store_true",
                    help="one-shot vs trials search at equal wall-clock (oneshot-compare.md)")
    ap.add_argument("--compare-seeds", type=int, default=3)
    ap.add_argument("--compare-tag", default="", help="suffix of the report's file names")
    ap.add_argument("--compare-recount", action="store_true",
                    help="the compare report again from the studies in --work (no training)")
    ap.add_argument("--proxy-trials", type=int, default=300)
    ap.add_argument("--confirm", type=int, default=6, help="plans the one-shot search confirms")
    ap.add_argument("--tiny", default="tests/assets/tiny_seg.py", help="--smoke's model")
