"""Where a Cube block pays (issue 29, item 5): the site map's additive prediction against trained
IoU, and the fronts it gives.

One map of the `joint` space (every searchable site × keep, the one-knob Cube subset and the
widths; `cubesearch.search.sitemap.build_map`) is measured on its own seed (`--map-seed`), from the
search's trained baseline. From it, without training anything:

- `cube-i`: `--finalists` plans spread over the MILP's predicted front of the Cube-only cells;
- `joint-i`: as many over the front of all the cells (Cube blocks and narrowed convs);
- `random-i`: `--random` plans with random Cube cells (about half the sites), predicted by the
  same additive sum, so the ranking is not judged on the MILP's own choices only;
- `pruning-R`: uniform channel pruning, every narrowable searchable conv at kept fraction R
  (`--ratios`, ≥ 4), and `unconverted`: the paired baseline.

Each plan is trained by the final recipe (`train_final`, `--epochs`, KD off, no early stopping)
under each of `--seeds` (not the map's seed). Reported (results/`--tag`.{md,json,png}):

- (a) `additive_kendall_tau`: Kendall τ of the predicted IoU against the trained IoU of the last
  seed, over the predicted plans, with a percentile-bootstrap 95 % interval over plans;
  `cross_seed_rung3_kendall_tau`: the halving rung-3 signal of the first seed (val IoU after 3
  epochs of the same schedule) against the same target, computed the same way;
- (c) hypervolumes of the trained fronts (GFLOPs ↓, mean IoU ↑; reference: 1.1 × the model's
  GFLOPs, IoU 0) of the joint plans, the Cube-only plans and the pruning curve (each with the
  unconverted model), their ratios, and how many sites of the joint front's plans are Cube blocks;
- (b) `map_hv_ratio_vs_halving`: with `--halving`, `search --strategy map` and `search --strategy
  halving` (its `--timeout` the map search's wall-clock) from the same baseline, HV of their
  trained fronts; null when not run.

Every step resumes: the map from OUT/map.json, the plans from OUT/plans.json, each trained run
from OUT/runs/ID-sSEED.json (written atomically). Run it once the machine is quiet:

    nice -n 10 env OMP_NUM_THREADS=1 flock /work/heavy.lock python benchmarks/map.py \\
        --model examples/unet.py --model-arg width=32 --tag map-unet
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import machine, md_table  # noqa: E402
from _stats import BOOT, BOOT_SEED, bootstrap_ci, tau  # noqa: E402

from cubesearch.cli.options import model_args  # noqa: E402  (the CLI's --model-arg parser)
from cubesearch.core.errors import CubesearchError  # noqa: E402
from cubesearch.core.helpers import atomic_write  # noqa: E402
from cubesearch.cost.pricing import count_flops, count_params  # noqa: E402
from cubesearch.plan.plan import Plan  # noqa: E402
from cubesearch.plan.width import kept_channels  # noqa: E402
from cubesearch.search.context import build_context  # noqa: E402
from cubesearch.search.evaluators.finetune import prepare_baseline  # noqa: E402
from cubesearch.search.pareto import ParetoPoint, loss_hypervolume, non_dominated  # noqa: E402
from cubesearch.search.settings import SearchSettings  # noqa: E402
from cubesearch.search.sitemap.build import build_map, map_jobs  # noqa: E402
from cubesearch.search.sitemap.milp import MapTable, spread, sweep  # noqa: E402
from cubesearch.search.sitemap.options import resolve_subset  # noqa: E402
from cubesearch.search.sitemap.plans import exact_costs, plan_dict, plan_parts  # noqa: E402
from cubesearch.search.sitemap.strategy import prunable  # noqa: E402
from cubesearch.training.finetune import Recipe, train_final  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RUNG = 3  # the halving rung whose signal is compared (val IoU after 3 epochs)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", default="all", choices=("all", "map", "train", "halving", "report"))
    p.add_argument("--model", default="smp:Unet:resnet18")
    p.add_argument("--model-arg", action="append", default=[])
    p.add_argument("--space", default="joint", help="a space with widths (the Cube-only plans use "
                   "its Cube cells)")
    p.add_argument("--subset", default="one-knob")
    p.add_argument("--tile-size", type=int, default=64)
    p.add_argument("--input-size", type=int, default=256, help="FLOPs reference H = W")
    p.add_argument("--train-tiles", type=int, default=384)
    p.add_argument("--val-tiles", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--baseline-epochs", type=float, default=12)
    p.add_argument("--distill-steps", type=int, default=100)
    p.add_argument("--epochs", type=float, default=8, help="the final recipe's epochs")
    p.add_argument("--loss", default="bce", help="the final recipe's loss (the trainer's default: bce); "
                   "another loss trains the same plans into OUT/runs-LOSS/")
    p.add_argument("--seeds", default="0,1", help="training seeds (the baseline's: the first)")
    p.add_argument("--map-seed", type=int, default=100)
    p.add_argument("--finalists", type=int, default=4, help="per space (Cube-only, joint)")
    p.add_argument("--random", type=int, default=4)
    p.add_argument("--ratios", default="0.25,0.5,0.75,0.875")
    p.add_argument("--halving", action="store_true", help="(b): also run both searches")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-map"))
    p.add_argument("--tag", default="map")
    p.add_argument("--by-model", default="", help="report: other results/TAG.json of this benchmark "
                   "(comma-separated tags) listed beside this one under `by_model`")
    p.add_argument("--load-log", default="", help="report: a log of `EPOCH LOAD1 ...` lines (e.g. "
                   "date +%%s and /proc/loadavg every minute) whose load range is recorded")
    p.add_argument("--fidelity", default="", help="report: results/NAME.json (+ .md) of the fidelity "
                   "benchmark gains this run's pruning curve (`pruning_curve`)")
    args = p.parse_args()
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    args.ratio_list = [float(r) for r in args.ratios.split(",")]
    return args


def settings_of(args: argparse.Namespace, **extra: Any) -> SearchSettings:
    return SearchSettings(
        model=args.model, model_kwargs=model_args(args.model_arg), budget="100%", strategy="map",
        space=args.space, out=args.out, seed=args.seed_list[0], tile_size=args.tile_size,
        input_size=(3, args.input_size, args.input_size), train_tiles=args.train_tiles,
        val_tiles=args.val_tiles, batch_size=args.batch_size, baseline_epochs=args.baseline_epochs,
        distill_steps=args.distill_steps, **extra)


def context(args: argparse.Namespace) -> Any:
    ctx = build_context(settings_of(args))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    prepare_baseline(ctx, progress=False, log=print)
    return ctx


def the_map(args: argparse.Namespace, ctx: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    sm = build_map(ctx, subset=args.subset, seed=args.map_seed, progress=False)
    data = dict(sm.data)
    data["wall_seconds_this_run"] = time.perf_counter() - t0
    return data


def stored_map(args: argparse.Namespace, ctx: Any) -> dict[str, Any]:
    """OUT/map.json with only this space's cells, as `build_map` returns it (the file may hold
    cells of another space measured on the same baseline)."""
    data = json.loads((Path(args.out) / "map.json").read_text())
    wanted = {j.key for j in map_jobs(ctx, resolve_subset(ctx.space, ctx.searchable, args.subset))}
    data["cells"] = [c for c in data["cells"] if (c["site"], c["option"]) in wanted]
    return data


# --- the plans ------------------------------------------------------------------------------------


def cube_table(data: dict[str, Any]) -> MapTable:
    return MapTable([c for c in data["cells"] if c.get("kind") != "width"], data["baseline_iou"],
                    {"gflops": data["base_gflops"], "params": data["base_params"]})


def random_plans(data: dict[str, Any], n: int) -> list[dict[str, str]]:
    """`n` random Cube plans (each site a random Cube cell with probability 1/2), seed 0."""
    rng = random.Random(0)
    by_site: dict[str, list[str]] = {}
    for c in data["cells"]:
        if c.get("kind") == "cube":
            by_site.setdefault(c["site"], []).append(c["option"])
    plans = []
    while len(plans) < n:
        options = {s: rng.choice(o) for s, o in by_site.items() if rng.random() < 0.5}
        if options and options not in plans:
            plans.append(options)
    return plans


def choose_plans(args: argparse.Namespace, ctx: Any, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The benchmark's plans (see the module docstring), each with its prediction."""
    exact = exact_costs(ctx, data)
    joint = MapTable.from_map(data)
    cube = cube_table(data)
    base = data["base_gflops"]
    plans: list[dict[str, Any]] = [{"id": "unconverted", "group": "unconverted", "sites": {},
                                    "widths": {}, "predicted_iou": data["baseline_iou"]}]
    for group, table in (("cube", cube), ("joint", joint)):
        try:
            front = [c for c in sweep(table, "gflops", base, points=61, exact=exact) if c.changed()]
        except CubesearchError as exc:  # e.g. no buildable mix of widths on coupled convs
            print(f"{group} plans: none ({exc})", flush=True)
            plans[0].setdefault("not_chosen", {})[group] = str(exc)
            continue
        for i, c in enumerate(spread(front, args.finalists, "gflops")):
            plans.append({"id": f"{group}-{i}", "group": group, "options": c.changed(),
                          **plan_dict(plan_parts(data, c.options)), "predicted_iou": c.predicted_iou,
                          "predicted_gflops": c.costs["gflops"]})
    for i, options in enumerate(random_plans(data, args.random)):
        c = cube.predict(options)
        plans.append({"id": f"random-{i}", "group": "random", "options": options,
                      **plan_dict(plan_parts(data, options)), "predicted_iou": c.predicted_iou,
                      "predicted_gflops": c.costs["gflops"]})
    convs = prunable(ctx)
    for r in args.ratio_list:
        plans.append({"id": f"pruning-{r:g}", "group": "pruning", "sites": {},
                      "widths": {c: r for c in convs}, "predicted_iou": None})
    return plans


def stored_plans(args: argparse.Namespace, ctx: Any, data: dict[str, Any]) -> list[dict[str, Any]]:
    file = Path(args.out) / "plans.json"
    if file.is_file():
        return json.loads(file.read_text())
    plans = choose_plans(args, ctx, data)
    atomic_write(file, json.dumps(plans, indent=2))
    return plans


# --- training -------------------------------------------------------------------------------------


def run_file(args: argparse.Namespace, plan_id: str, seed: int) -> Path:
    runs = "runs" if args.loss == "bce" else f"runs-{args.loss.replace('+', '-')}"
    return Path(args.out) / runs / f"{plan_id}-s{seed}.json"


def train_plan(args: argparse.Namespace, ctx: Any, p: dict[str, Any], seed: int) -> dict[str, Any]:
    """One plan, one seed, by the final recipe (KD off, `--epochs`, no early stopping)."""
    s = ctx.settings
    plan = Plan(model=s.model, model_kwargs=s.model_args, input_size=s.input_size,
                sites=p["sites"], widths=p["widths"])
    recipe = Recipe(epochs=args.epochs, distill_steps=args.distill_steps, patience=None)
    t0 = time.perf_counter()
    r = train_final(plan, ctx.baseline_dir, recipe=recipe, seed=seed, data=ctx.datasets,
                    input_size=(s.input_size[0], s.tile_size, s.tile_size), batch_size=s.batch_size,
                    progress=False, loss=args.loss)
    model = r.model.eval()
    curve = [float(h["val_iou"]) for h in r.history if "val_iou" in h]
    return {"id": p["id"], "seed": seed, "iou": float(r.metrics["iou"]), "curve": curve,
            "gflops": count_flops(model, s.input_size) / 1e9, "params": count_params(model),
            "seconds": time.perf_counter() - t0, "epochs": args.epochs}


def train_all(args: argparse.Namespace, ctx: Any, plans: list[dict[str, Any]]) -> None:
    """Every plan under the first seed, then under the next: a stopped run has whole seeds."""
    for seed in args.seed_list:
        for p in plans:
            file = run_file(args, p["id"], seed)
            if file.is_file():
                continue
            rec = train_plan(args, ctx, p, seed)
            atomic_write(file, json.dumps(rec, indent=2))
            print(f"{p['id']} seed {seed}: IoU {rec['iou']:.4f}, {rec['gflops']:.3f} GFLOPs, "
                  f"{rec['seconds']:.0f} s", flush=True)


def runs_of(args: argparse.Namespace, plans: list[dict[str, Any]]) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for p in plans:
        for seed in args.seed_list:
            file = run_file(args, p["id"], seed)
            if file.is_file():
                out.setdefault(p["id"], {})[seed] = json.loads(file.read_text())
    return out


# --- (b): the two searches at equal wall-clock ----------------------------------------------------


def halving_ratio(args: argparse.Namespace, ctx: Any) -> dict[str, Any]:
    """`search --strategy map` (its wall-clock T), then `--strategy halving --timeout T`, both
    from this baseline (copied), fronts' HV of trained IoU."""
    from cubesearch.search import search

    common = dict(model_kwargs=model_args(args.model_arg), space=args.space.replace("joint", "default"),
                  tile_size=args.tile_size, input_size=(3, args.input_size, args.input_size),
                  train_tiles=args.train_tiles, val_tiles=args.val_tiles, batch_size=args.batch_size,
                  baseline_epochs=args.baseline_epochs, distill_steps=args.distill_steps,
                  seed=args.seed_list[0], progress=False, rungs=(1.0, args.epochs))
    fronts, seconds = {}, {}
    for name in ("map", "halving"):
        out = Path(args.out) / f"b-{name}"
        if not (out / "baselines").exists():
            shutil.copytree(Path(args.out) / "baselines", out / "baselines")
        extra = {"trials": args.finalists} if name == "map" else {
            "trials": 3 * args.finalists, "timeout": seconds["map"]}
        t0 = time.perf_counter()
        if name == "map":
            extra["rungs"] = (args.epochs,)
        result = search(args.model, "100%", out=str(out), strategy=name, **{**common, **extra})
        seconds[name] = time.perf_counter() - t0
        fronts[name] = [p for p in result.front]
    ref = ctx.base_flops / 1e9 * 1.1
    hv = {n: loss_hypervolume(np.array([[p.gflops, -p.iou] for p in f]).reshape(-1, 2),
                              np.array([ref, 0.0])) for n, f in fronts.items()}
    return {"hv": hv, "seconds": seconds,
            "ratio": hv["map"] / hv["halving"] if hv["halving"] else None}


# --- the report -----------------------------------------------------------------------------------


def rank_with_ci(signal: list[float], target: list[float]) -> dict[str, Any]:
    s, t = np.asarray(signal, float), np.asarray(target, float)
    return {"n": len(s), "tau": tau(s, t),
            "ci95": bootstrap_ci(lambda idx: tau(s[idx], t[idx]), len(s))}


def group_points(plans: list[dict], runs: dict, groups: tuple[str, ...], seed: int | None = None
                 ) -> list[ParetoPoint]:
    """The groups' trained plans (and the unconverted model) as points: mean IoU over seeds, or
    one seed's IoU."""
    pts = []
    for i, p in enumerate(plans):
        if p["group"] not in (*groups, "unconverted") or p["id"] not in runs:
            continue
        rs = [r for s, r in runs[p["id"]].items() if seed is None or s == seed]
        if not rs:
            continue
        pts.append(ParetoPoint(trial=i, iou=float(np.mean([r["iou"] for r in rs])),
                               gflops=rs[0]["gflops"], params=rs[0]["params"],
                               sites_replaced=len(p["sites"]), label=p["id"]))
    return pts


def hypervolume(pts: list[ParetoPoint], ref: float) -> float:
    """HV of (GFLOPs ↓, IoU ↑) against (ref GFLOPs, IoU 0)."""
    return loss_hypervolume(np.array([[q.gflops, -q.iou] for q in pts]).reshape(-1, 2),
                            np.array([ref, 0.0]))


def hv_ratio_ci(a: list[ParetoPoint], b: list[ParetoPoint], ref: float) -> list[float] | None:
    """Percentile-bootstrap 95 % interval of HV(a) / HV(b): each side's plans resampled with
    replacement (the unconverted model kept in both), BOOT resamples."""
    rng = np.random.default_rng(BOOT_SEED)

    def resample(pts: list[ParetoPoint]) -> list[ParetoPoint]:
        fixed = [q for q in pts if q.label == "unconverted"]
        rest = [q for q in pts if q.label != "unconverted"]
        return fixed + [rest[i] for i in rng.integers(0, len(rest), len(rest))] if rest else fixed

    vals = []
    for _ in range(BOOT):
        hb = hypervolume(resample(b), ref)
        if hb:
            vals.append(hypervolume(resample(a), ref) / hb)
    if len(vals) < BOOT // 2:
        return None
    return [float(v) for v in np.percentile(vals, [2.5, 97.5])]


def hv_figures(plans: list[dict], runs: dict, ref: float, seeds: list[int]) -> dict[str, Any]:
    """(c): HV of the joint, Cube-only and pruning fronts (mean IoU over seeds), their ratios
    to pruning with plan-bootstrap intervals and per seed, and the joint front."""
    pts = {n: group_points(plans, runs, (n,)) for n in ("joint", "cube", "pruning")}
    hv = {n: hypervolume(q, ref) for n, q in pts.items()}
    out: dict[str, Any] = {"hypervolume": hv, "joint_front": [q.label for q in non_dominated(pts["joint"])]}
    for n in ("joint", "cube"):
        if not any(q.label != "unconverted" for q in pts[n]):  # the group was not chosen / trained
            out.update({f"{n}_hv_ratio_vs_pruning": None, f"{n}_hv_ratio_vs_pruning_ci95": None,
                        f"{n}_hv_ratio_vs_pruning_per_seed": {}})
            continue
        out[f"{n}_hv_ratio_vs_pruning"] = hv[n] / hv["pruning"] if hv["pruning"] else None
        out[f"{n}_hv_ratio_vs_pruning_ci95"] = hv_ratio_ci(pts[n], pts["pruning"], ref)
        per_seed = {}
        for s in seeds:
            a, b = (hypervolume(group_points(plans, runs, (m,), s), ref) for m in (n, "pruning"))
            per_seed[str(s)] = a / b if b else None
        out[f"{n}_hv_ratio_vs_pruning_per_seed"] = per_seed
    return out


def effective_kept(widths: dict[str, float], data: dict[str, Any]) -> list[float] | None:
    """[min, max] over the narrowed convs of kept / C_out after rounding to a multiple of 8: a
    conv of 16 channels keeps 8 at every ratio, so a uniform ratio is not uniform there."""
    out = {s["name"]: s["out_channels"] for s in data["sites"]}
    kept = [kept_channels(out[c], r) / out[c] for c, r in widths.items() if c in out]
    return [min(kept), max(kept)] if kept else None


def pruning_curve(plans: list[dict], runs: dict, args: argparse.Namespace, data: dict[str, Any]
                  ) -> dict[str, Any]:
    """Uniform L1 channel pruning at each ratio (and the unconverted model): GFLOPs, IoU per seed
    and mean, and the per-epoch val IoU curves (issue 30's reference curve)."""
    points = []
    for p in plans:
        if p["group"] not in ("pruning", "unconverted") or p["id"] not in runs:
            continue
        rs = runs[p["id"]]
        points.append({"id": p["id"], "kept_fraction": next(iter(p["widths"].values()), 1.0),
                       "kept_after_rounding": effective_kept(p["widths"], data),
                       "gflops": next(iter(rs.values()))["gflops"],
                       "iou": float(np.mean([r["iou"] for r in rs.values()])),
                       "iou_by_seed": {str(s): r["iou"] for s, r in rs.items()},
                       "curves": {str(s): r["curve"] for s, r in rs.items()}})
    return {"model": args.model, "model_args": args.model_arg,
            "recipe": (f"train_final, {args.epochs:g} epochs, loss {args.loss}, KD off, no early "
                       f"stopping, cosine, best epoch kept; from the {args.baseline_epochs:g}-epoch "
                       "baseline; Torch-Pruning L1, every narrowable searchable conv at the kept fraction"),
            "tiles": f"{args.train_tiles} train / {args.val_tiles} val of {args.tile_size}²",
            "seeds": args.seed_list, "points": sorted(points, key=lambda q: q["gflops"])}


def figures(args: argparse.Namespace, data: dict, plans: list[dict], runs: dict,
            halving: dict | None) -> dict[str, Any]:
    # only seeds under which every plan trained (a run stopped midway reports its whole seeds);
    # the target: the last of them
    have = [s for s in args.seed_list if all(s in runs.get(p["id"], {}) for p in plans)]
    partial = [s for s in args.seed_list if s not in have and any(s in r for r in runs.values())]
    runs = {k: {s: r for s, r in v.items() if s in have} for k, v in runs.items()}
    last, first = (have[-1], have[0]) if have else (args.seed_list[-1], args.seed_list[0])
    predicted = [p for p in plans if p["predicted_iou"] is not None and p["group"] != "unconverted"
                 and last in runs.get(p["id"], {})]
    target = [runs[p["id"]][last]["iou"] for p in predicted]
    additive = rank_with_ci([p["predicted_iou"] for p in predicted], target)
    with_rung = [(runs[p["id"]][first]["curve"][RUNG - 1], runs[p["id"]][last]["iou"]) for p in predicted
                 if first in runs[p["id"]] and len(runs[p["id"]][first]["curve"]) >= RUNG]
    rung3 = rank_with_ci([a for a, _ in with_rung], [b for _, b in with_rung]) if first != last else \
        {"n": 0, "tau": None, "ci95": None}
    by_seed = {str(s): rank_with_ci([p["predicted_iou"] for p in predicted if s in runs[p["id"]]],
                                    [runs[p["id"]][s]["iou"] for p in predicted if s in runs[p["id"]]])
               for s in have}
    ref = data["base_gflops"] * 1.1
    hvf = hv_figures(plans, runs, ref, have)
    by_id = {p["id"]: p for p in plans}
    cube_sites = sum(len(by_id[q]["sites"]) for q in hvf["joint_front"])
    paired = {s: runs["unconverted"][s]["iou"] for s in args.seed_list if s in runs.get("unconverted", {})}
    gaps = [{"id": p["id"], "predicted_delta": p["predicted_iou"] - data["baseline_iou"],
             "trained_delta": runs[p["id"]][last]["iou"] - paired[last]} for p in predicted if last in paired]
    return {
        "additive_kendall_tau": additive["tau"], "additive_kendall_tau_ci95": additive["ci95"],
        "additive_plans": additive["n"],
        "cross_seed_rung3_kendall_tau": rung3["tau"], "cross_seed_rung3_kendall_tau_ci95": rung3["ci95"],
        "target_seed": last, "rung_seed": first if first != last else None,
        "additive_kendall_tau_by_seed": by_seed,
        "map_hv_ratio_vs_halving": halving["ratio"] if halving else None, "halving": halving,
        **hvf, "hv_reference": [ref, 0.0],
        "cube_sites_on_joint_front": cube_sites,
        "pruning_curve": pruning_curve(plans, runs, args, data),
        "finalists_below_prediction_by_over_0.05": [g["id"] for g in gaps
                                                   if g["trained_delta"] < g["predicted_delta"] - 0.05],
        "prediction_gaps": gaps,
        "seeds_reported": have, "seeds_left_out_partly_trained": partial,
        "cells": len(data["cells"]), "cells_measured": sum(c["option"] != "keep" for c in data["cells"]),
        "map_seconds": sum(float(c.get("seconds") or 0) for c in data["cells"]),
        "train_seconds": sum(r["seconds"] for v in runs.values() for r in v.values()),
        "baseline_iou": data["baseline_iou"], "subset_rule": data["subset_rule"],
        "plans": plans, "runs": {k: {str(s): r for s, r in v.items()} for k, v in runs.items()},
        "conditions": conditions(args), "machine": machine(),
    }


def conditions(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "model_args": args.model_arg, "space": args.space,
            "subset": args.subset, "tile_size": args.tile_size, "flops_input": args.input_size,
            "train_tiles": args.train_tiles, "val_tiles": args.val_tiles,
            "baseline_epochs": args.baseline_epochs, "distill_steps": args.distill_steps,
            "final_recipe_epochs": args.epochs, "loss": args.loss, "kd": "off", "early_stopping": "off",
            "training_seeds": args.seed_list, "map_seed": args.map_seed,
            "threads": torch.get_num_threads(), "load_average": list(os.getloadavg())}


def _f(v: Any, nd: int = 3) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


TARGETS = {"additive_kendall_tau": 0.65, "cross_seed_rung3_kendall_tau": None,
           "map_hv_ratio_vs_halving": 1.2, "joint_hv_ratio_vs_pruning": 1.05,
           "cube_hv_ratio_vs_pruning": None}


def verdict(value: float | None, ci: list[float] | None, target: float | None, tie: float | None) -> str:
    """Met / missed against `target` only when the interval clears it; a ratio whose interval
    holds `tie` (1.0: equal to pruning) is called a tie."""
    if value is None:
        return "not run"
    out = []
    if target is not None:
        out.append("met" if ci and ci[0] >= target else "missed" if ci and ci[1] < target
                   else f"{'above' if value >= target else 'below'} the target, inside the interval")
    if tie is not None and ci:
        out.append(f"tie with pruning (interval holds {tie:g})" if ci[0] <= tie <= ci[1]
                   else "above pruning" if ci[0] > tie else "below pruning")
    return "; ".join(out) or "—"


def figure_rows(fig: dict[str, Any]) -> list[str]:
    rows = []
    for key, target in TARGETS.items():
        ci = fig.get(f"{key}_ci95")
        tie = 1.0 if key.endswith("vs_pruning") else None
        n = f" (n={fig['additive_plans']})" if key == "additive_kendall_tau" else ""
        rows.append(f"| {key}{n} | {_f(fig.get(key), 2)}{_ci(ci)} | {'—' if target is None else target} | "
                    f"{verdict(fig.get(key), ci, target, tie)} |")
    return rows + [f"| cube_sites_on_joint_front | {fig['cube_sites_on_joint_front']} | | |"]


def _span(v: list[float] | None) -> str:
    return "—" if not v else f"{v[0]:.2f}–{v[1]:.2f}" if v[0] != v[1] else f"{v[0]:.2f}"


def pruning_lines(curve: dict[str, Any]) -> list[str]:
    """The pruning curve as a table (issue 30's reference), with the recipe named."""
    rows = [[q["id"], f"{q['kept_fraction']:g}", _span(q.get("kept_after_rounding")),
             f"{q['gflops']:.3f}", f"{q['iou']:.3f}",
             " / ".join(f"{v:.3f}" for v in q["iou_by_seed"].values()),
             "; ".join(" ".join(f"{x:.2f}" for x in c) for c in q["curves"].values())]
            for q in curve["points"]]
    return [f"Uniform channel pruning ({curve['recipe']}; {curve['tiles']}):", "",
            md_table(["plan", "kept", "kept per conv (rounded to 8)", "GFLOPs", "IoU (mean)", "IoU by seed",
                      "val IoU per epoch, by seed"],
                     rows), "", collapse_line(curve)]


def collapse_line(curve: dict[str, Any]) -> str:
    """Which runs ended at IoU 0 after scoring above it (the model fell back to predicting
    background everywhere), and from which epoch."""
    fell = [f"{q['id']} seed {s} (from epoch {max(i for i, x in enumerate(c) if x > 0) + 2})"
            for q in curve["points"] for s, c in q["curves"].items() if c and c[-1] == 0 and max(c) > 0]
    return (f"Runs that ended at val IoU 0 after scoring above it: {', '.join(fell)}; the best epoch "
            "is what the table reports." if fell else "No run ended at val IoU 0.")


def render(fig: dict[str, Any]) -> str:
    c = fig["conditions"]
    runs = fig["runs"]
    rows = []
    for p in fig["plans"]:
        rs = runs.get(p["id"], {})
        ious = [rs[str(s)]["iou"] for s in c["training_seeds"] if str(s) in rs]
        gflops = next(iter(rs.values()))["gflops"] if rs else None
        rows.append([p["id"], str(len(p["sites"])), str(len(p["widths"])), _f(gflops),
                     _f(p["predicted_iou"]), " / ".join(_f(i) for i in ious) or "—"])
    lines = [f"# Where a Cube block pays: the site map ({c['model']} {' '.join(c['model_args'])})", "",
             f"Conditions: {json.dumps({k: v for k, v in c.items() if k != 'load_average'})}; "
             f"load average at the end {', '.join(f'{v:.1f}' for v in c['load_average'])}. "
             f"{fig['machine']}.", "",
             f"Map: {fig['cells']} cells ({fig['cells_measured']} measured, {fig['subset_rule']}), "
             f"{fig['map_seconds']:.0f} s of cell measurement; baseline IoU {fig['baseline_iou']:.4f}. "
             f"Training the plans: {fig['train_seconds'] / 60:.1f} min.", "",
             f"Trained: each plan by the final recipe after {c['final_recipe_epochs']:g} epochs "
             f"(loss {c.get('loss', 'bce')}, KD off, "
             f"no early stopping; not converged), seeds {c['training_seeds']}; the map on seed "
             f"{c['map_seed']}. Intervals: percentile bootstrap, {BOOT} resamples of the plans."
             + (f" Reported: seeds {fig['seeds_reported']}; left out (not every plan trained): "
                f"{fig['seeds_left_out_partly_trained']}." if fig["seeds_left_out_partly_trained"] else ""),
             "",
             "| figure | value [95 % CI] | target | verdict |", "|---|---:|---:|---|",
             *figure_rows(fig), "",
             "Additive τ against each seed's trained IoU: "
             + ", ".join(f"seed {s} {_f(v['tau'], 2)}{_ci(v['ci95'])} (n={v['n']})"
                         for s, v in fig["additive_kendall_tau_by_seed"].items()) + ".", "",
             f"Joint front: {', '.join(fig['joint_front'])}; {fig['cube_sites_on_joint_front']} of its "
             "plans' sites are Cube blocks.", "",
             *[f"No {g} plans were chosen: {why}" for g, why in
               fig["plans"][0].get("not_chosen", {}).items()], "",
             *pruning_lines(fig["pruning_curve"]), "",
             f"Finalists trained more than 0.05 below their predicted ΔIoU (against the paired "
             f"baseline): {', '.join(fig['finalists_below_prediction_by_over_0.05']) or 'none'}.", "",
             md_table(["plan", "Cube sites", "narrowed", "GFLOPs", "predicted IoU", "trained IoU by seed"],
                      rows), ""]
    return "\n".join(lines)


def plot(fig: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = str(fig["target_seed"])
    f, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    colours = {"cube": "#2ca02c", "joint": "#d62728", "random": "#9467bd", "pruning": "#7f7f7f",
               "unconverted": "#1f77b4"}
    for p in fig["plans"]:
        r = fig["runs"].get(p["id"], {})
        if last in r and p["predicted_iou"] is not None and p["group"] != "unconverted":
            a.scatter(p["predicted_iou"], r[last]["iou"], c=colours[p["group"]], s=20)
        if r:
            mean = np.mean([x["iou"] for x in r.values()])
            b.scatter(next(iter(r.values()))["gflops"], mean, c=colours[p["group"]], s=20,
                      label=p["group"])
    a.set_xlabel("predicted IoU (baseline + Σ ΔIoU of the cells)")
    a.set_ylabel(f"trained IoU (seed {last})")
    a.set_title(f"τ {_f(fig['additive_kendall_tau'], 2)}{_ci(fig['additive_kendall_tau_ci95'])}")
    handles = {h.get_label(): h for h in b.collections}
    b.legend(handles.values(), handles.keys(), fontsize=7)
    b.set_xlabel("GFLOPs (fvcore)")
    b.set_ylabel("trained IoU (mean over seeds)")
    b.set_title("joint / Cube-only / uniform pruning")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    f.tight_layout()
    f.savefig(png)
    plt.close(f)


KEYS = ("additive_kendall_tau", "cross_seed_rung3_kendall_tau", "map_hv_ratio_vs_halving",
        "joint_hv_ratio_vs_pruning", "cube_hv_ratio_vs_pruning", "cube_sites_on_joint_front",
        "cells", "map_seconds")


def summary(fig: dict[str, Any]) -> dict[str, Any]:
    """A model's issue keys with their intervals and conditions (the `by_model` entry)."""
    out = {k: fig.get(k) for k in KEYS}
    out.update({f"{k}_ci95": fig.get(f"{k}_ci95") for k in KEYS if f"{k}_ci95" in fig})
    out["conditions"] = fig["conditions"]
    return out


def by_model(fig: dict[str, Any], tags: str) -> dict[str, Any]:
    """This run's summary and each other tag's (results/TAG.json), keyed by model."""
    out = {}
    for f in [fig] + [json.loads((RESULTS / f"{t}.json").read_text()) for t in tags.split(",") if t]:
        c = f["conditions"]
        out[" ".join([c["model"], *c["model_args"]])] = summary(f)
    return out


def add_pruning_curve(name: str, curve: dict[str, Any]) -> None:
    """results/NAME.json gains `pruning_curve`; NAME.md its section (replaced if there)."""
    js, md = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    fig = json.loads(js.read_text())
    fig["pruning_curve"] = curve
    atomic_write(js, json.dumps(fig, indent=1, default=float))  # the fidelity files' own layout
    head = "## Channel pruning curve (today's default recipe)"
    text = md.read_text().split(head)[0].rstrip() + "\n\n"
    section = [head, "", "Measured by `benchmarks/map.py` (its `pruning-R` runs), not by this page's "
               "runs: a different recipe and scale from the tables above.", "", *pruning_lines(curve), ""]
    atomic_write(md, text + "\n".join(section))


def load_range(path: str) -> list[float] | None:
    """Min and max 1-minute load average in a log of `EPOCH LOAD1 LOAD5 ...` lines."""
    if not path or not Path(path).is_file():
        return None
    loads = [float(line.split()[1]) for line in Path(path).read_text().splitlines() if line.strip()]
    return [min(loads), max(loads)] if loads else None


def report(args: argparse.Namespace, ctx: Any, data: dict, plans: list[dict]) -> None:
    halving_file = Path(args.out) / "halving.json"
    halving = json.loads(halving_file.read_text()) if halving_file.is_file() else None
    fig = figures(args, data, plans, runs_of(args, plans), halving)
    fig["conditions"]["load_range_during_run"] = load_range(args.load_log)
    fig["by_model"] = by_model(fig, args.by_model)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write(RESULTS / f"{args.tag}.json", json.dumps(fig, indent=2, default=float))
    plot(fig, RESULTS / f"{args.tag}.png")
    images = [f"![predicted vs trained IoU; the trained fronts]({args.tag}.png)"]
    if (Path(args.out) / "map.png").is_file():  # the site map's own heat map (build_map's)
        shutil.copyfile(Path(args.out) / "map.png", RESULTS / f"{args.tag}-sitemap.png")
        images.append(f"![the site map: ΔIoU of each option alone]({args.tag}-sitemap.png)")
    atomic_write(RESULTS / f"{args.tag}.md", render(fig) + "\n" + "\n\n".join(images) + "\n")
    if args.fidelity:
        add_pruning_curve(args.fidelity, fig["pruning_curve"])
    print(render(fig).split("\n\n")[3])


def main() -> None:
    args = parse()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ctx = context(args)
    # other phases: the map as measured so far (a report never measures cells)
    data = the_map(args, ctx) if args.phase in ("all", "map") else stored_map(args, ctx)
    if args.phase == "map":
        return
    plans = stored_plans(args, ctx, data)
    if args.phase in ("all", "train"):
        train_all(args, ctx, plans)
    if args.halving and args.phase in ("all", "halving"):
        atomic_write(Path(args.out) / "halving.json", json.dumps(halving_ratio(args, ctx), default=float))
    if args.phase in ("all", "report"):
        report(args, ctx, data, plans)


if __name__ == "__main__":
    main()
