"""The plan choice and trial context the fidelity benchmarks share (benchmarks/fidelity.py,
kd_ablation.py): the demo's training settings, plans stratified over the FLOPs range, resumable
(plan, seed) claims. Kept from the retired one-shot benchmark (benchmarks/results/oneshot*.md),
whose cache (`.oneshot-cache`) and plan seeds these benchmarks still read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
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

    from cubesearch.cli.demo import DEMO_TRAINING

    api = search_api()
    training = dict(DEMO_TRAINING)
    if args.smoke:  # a minute-long end-to-end check of the benchmark itself, not a measurement
        training.update(epochs_per_trial=0.25, baseline_epochs=0.5, tile_size=32, train_tiles=32,
                        val_tiles=8, distill_steps=5)
    if getattr(args, "val_tiles", None):
        training["val_tiles"] = args.val_tiles
    extra = {"model_kwargs": args.model_kwargs} if getattr(args, "model_kwargs", None) else {}
    settings = api.SearchSettings(model=args.model, budget=args.budget, out=str(args.work),
                                  strategy="trials", seed=args.seed, **extra, **training)
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


def spread_order(n: int) -> list[int]:
    """0, 1 (the references), then the random plans (sorted by FLOPs) farthest-first, so that any
    prefix of the run covers the FLOPs range."""
    order = [i for i in (0, 1) if i < n]
    rest = list(range(2, n))
    while rest:
        if len(order) <= 2:
            pick = rest[0]
        else:
            pick = max(rest, key=lambda i: min(abs(i - j) for j in order if j >= 2))
        order.append(pick)
        rest.remove(pick)
    return order


def claim(file: Path) -> bool:
    """Take (plan, seed) for this process: an exclusive claim file, stale once its process died."""
    lock = file.with_suffix(".claim")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(lock.read_text() or 0), 0)
            return False  # another live worker has it
        except (ProcessLookupError, ValueError):
            lock.unlink(missing_ok=True)
            return claim(file)
    with os.fdopen(fd, "w") as fh:
        fh.write(str(os.getpid()))
    return True


