"""Does the supernet rank plans like the per-trial evaluation does? (issue 16's measurement)

In the demo's setting (`smp:Unet:resnet18`, the default space, 70% budget, 64×64 synthetic tiles,
384 training tiles, the demo's baseline): pick plans stratified over the FLOPs range (fixed
seed; FullCube and the unconverted model included), train each standalone with today's per-trial
recipe under two seeds (the ground truth and its noise), train one supernet from the same
baseline, score the same plans with it, and compare the rankings: Kendall τ and Spearman ρ of
supernet score vs mean standalone IoU, seed-0 vs seed-1 τ (the noise ceiling), top-3 overlap,
plans per hour of both evaluators (measured side by side in one process) and the supernet's
training cost in baseline-epoch equivalents.

Phases (each resumable; results are cached as JSON under `--cache`, gitignored):

    python benchmarks/oneshot.py --phase standalone   # ground truth: ~1-2 min per (plan, seed)
    python benchmarks/oneshot.py --phase supernet     # train the supernet, score, ablations
    python benchmarks/oneshot.py --phase report       # tables: benchmarks/results/oneshot.{md,json}
    python benchmarks/oneshot.py                      # all three

The standalone phase does not depend on the supernet: it can run first, alone, in the background.
"""

from __future__ import annotations

import argparse
import hashlib
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
CACHE = ROOT / "benchmarks" / ".oneshot-cache"
RESULTS = ROOT / "benchmarks" / "results"


# --- the per-trial code path, wherever the search code keeps it today --------------------------


def search_api() -> Any:
    """The per-trial code path, wherever the search code keeps it: a namespace with
    SearchSettings, build_context, ensure_datasets, ensure_baseline and evaluate_plan
    (cubesearch.search and .search.context after the package split, else cubesearch.searching)."""
    import importlib
    import types

    names = ("SearchSettings", "build_context", "ensure_datasets", "ensure_baseline", "evaluate_plan")
    found: dict[str, Any] = {}
    for mod in ("cubesearch.search", "cubesearch.search.context", "cubesearch.searching"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        for n in names:
            if n not in found and hasattr(m, n):
                found[n] = getattr(m, n)
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"cannot find the per-trial evaluation ({', '.join(missing)}) in "
                         "cubesearch.search or cubesearch.searching")
    return types.SimpleNamespace(**found)


def outcome(out: Any) -> dict[str, Any]:
    """evaluate_plan's result as a dict (a dict before the search package split, a TrialOutcome
    after it)."""
    if isinstance(out, dict):
        return out
    costs = dict(getattr(out, "costs", {}) or {})
    return {"iou": float(out.iou), "gflops": costs.get("gflops"), "params": costs.get("params"),
            "seconds": float(out.seconds), "checkpoint": out.checkpoint}


def make_context(args: argparse.Namespace, baseline: bool = True) -> Any:
    import inspect

    from cubesearch.demo import DEMO_TRAINING

    api = search_api()
    settings = api.SearchSettings(model=args.model, budget=args.budget, out=str(args.work),
                                  seed=args.seed, **DEMO_TRAINING)
    kwargs = {"progress": False} if "progress" in inspect.signature(api.build_context).parameters else {}
    ctx = api.build_context(settings, **kwargs)
    if baseline:
        api.ensure_datasets(ctx)
        api.ensure_baseline(ctx, progress=False, log=lambda m: print(m, flush=True))
    return ctx


# --- plans: stratified over the FLOPs range ----------------------------------------------------


def random_plan(ctx: Any, rng: random.Random) -> dict[str, Any]:
    """Each searchable site replaced with probability p (p itself uniform per plan, so the pool
    covers sparse and dense plans), its config uniform over what the space allows there."""
    p = rng.random()
    plan = {}
    for site in ctx.searchable:
        if rng.random() < p:
            plan[site.name] = rng.choice(ctx.space.site_combos(site))
    return plan


def choose_plans(ctx: Any, n: int, seed: int, pool: int = 4000) -> list[tuple[str, dict]]:
    """`n` plans: the unconverted model, FullCube, and n-2 feasible random plans, one per
    equal-width FLOPs bin over [cheapest, budget] of a pool of random feasible plans."""
    rng = random.Random(seed)
    cost = ctx.cost
    fullcube = {s.name: ctx.space.default_config() for s in ctx.searchable}
    candidates = []
    for _ in range(pool):
        plan = random_plan(ctx, rng)
        if plan and cost.flops(plan) <= ctx.budget_flops:
            candidates.append((cost.flops(plan), plan))
    candidates.sort(key=lambda c: c[0])
    lo, hi = candidates[0][0], candidates[-1][0]
    k = n - 2
    chosen: list[tuple[str, dict]] = [("unconverted", {}), ("FullCube", fullcube)]
    used: set[int] = set()
    for b in range(k):
        a, z = lo + (hi - lo) * b / k, lo + (hi - lo) * (b + 1) / k
        inside = [i for i, (f, _) in enumerate(candidates) if a <= f <= z and i not in used]
        if not inside:  # an empty bin: the nearest unused plan to its centre
            mid = (a + z) / 2
            inside = [min((i for i in range(len(candidates)) if i not in used),
                          key=lambda i: abs(candidates[i][0] - mid))]
        i = rng.choice(inside)
        used.add(i)
        chosen.append((f"random {b + 1}", candidates[i][1]))
    return chosen


def plans_key(plans: list[tuple[str, dict]]) -> str:
    text = json.dumps([[label, {n: c.to_dict() for n, c in sorted(p.items())}] for label, p in plans],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def load_plans(ctx: Any, args: argparse.Namespace) -> list[tuple[str, dict]]:
    plans = choose_plans(ctx, args.plans, args.seed)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    record = {"key": plans_key(plans), "model": args.model, "budget": args.budget, "seed": args.seed,
              "plans": [{"label": label, "gflops": ctx.cost.flops(p) / 1e9,
                         "sites": {n: c.to_dict() for n, c in p.items()}} for label, p in plans]}
    (cache / "plans.json").write_text(json.dumps(record, indent=1))
    return plans


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


# --- phase 1: the ground truth -----------------------------------------------------------------

SEED_STRIDE = 1000  # trial number = plan index + SEED_STRIDE * seed: same baseline, other trial seed


def standalone(args: argparse.Namespace) -> None:
    ctx = make_context(args)
    api = search_api()
    plans = load_plans(ctx, args)
    key = plans_key(plans)
    cache = Path(args.cache) / f"standalone-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    print(f"{len(plans)} plans (key {key}), {args.seeds} seeds; cache {cache}", flush=True)
    for seed in range(args.seeds):
        for i, (label, plan) in enumerate(plans):
            file = cache / f"plan{i:02d}-seed{seed}.json"
            if file.exists():
                continue
            number = i + SEED_STRIDE * seed
            load0 = os.getloadavg()[0]
            out = outcome(api.evaluate_plan(ctx, plan, number))
            result = {"plan": i, "label": label, "seed": seed, "trial_number": number,
                      "iou": out["iou"], "gflops": out["gflops"], "params": out["params"],
                      "gflops_estimate": ctx.cost.flops(plan) / 1e9, "sites_replaced": len(plan),
                      "seconds": out["seconds"], "load_start": load0, "load_end": os.getloadavg()[0],
                      "threads": __import__("torch").get_num_threads()}
            write_json(file, result)
            shutil.rmtree(out["checkpoint"], ignore_errors=True)  # 50 MB each; the IoU is the result
            print(f"[{time.strftime('%H:%M:%S')}] plan {i:2d} ({label}, {len(plan)} sites, "
                  f"{out['gflops']:.3f} GFLOPs) seed {seed}: IoU {out['iou']:.4f} in "
                  f"{out['seconds']:.0f} s (load {load0:.1f})", flush=True)


def standalone_results(args: argparse.Namespace, plans: list[tuple[str, dict]]) -> dict[int, dict]:
    cache = Path(args.cache) / f"standalone-{plans_key(plans)}"
    out: dict[int, dict] = {}
    for i in range(len(plans)):
        seeds = {}
        for seed in range(args.seeds):
            file = cache / f"plan{i:02d}-seed{seed}.json"
            if file.exists():
                seeds[seed] = json.loads(file.read_text())
        out[i] = seeds
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("standalone", "supernet", "report", "all"), default="all")
    ap.add_argument("--model", default="smp:Unet:resnet18")
    ap.add_argument("--budget", default="70%")
    ap.add_argument("--plans", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/cubesearch-oneshot")
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--list-plans", action="store_true", help="print the chosen plans and stop")
    args = ap.parse_args()
    if args.list_plans:
        ctx = make_context(args, baseline=False)
        for i, (label, plan) in enumerate(load_plans(ctx, args)):
            print(f"{i:2d} {label:12s} {len(plan):2d} sites {ctx.cost.flops(plan) / 1e9:.3f} GFLOPs")
        return
    if args.phase in ("standalone", "all"):
        standalone(args)


if __name__ == "__main__":
    main()
