"""Search benchmark: the cost model's speed against fvcore, and NSGA-II vs TPE vs random.

(a) Cost model: plans/s of `CostModel.flops` (tables cold, then warm) against fvcore counting a
    converted model, for `smp:Unet:resnet18` at 3×512×512, on random plans of the default space
    (every eligible site); the two counts are checked equal on the fvcore plans.
(b) Samplers: `cubesearch.search` (the real search: baseline, references, budget,
    warm start, training, fvcore) on a small model with synthetic data, once per sampler and seed,
    each its own study in one --out per seed under /tmp; hypervolume of the Pareto front after
    N completed trials (`cubesearch.search.pareto.hypervolume`, reference point (baseline GFLOPs × 1.1,
    IoU 0)), and trials per hour. The issue's target: NSGA-II's hypervolume after 30 trials ≥
    random's after 60.
    The studies of a seed share one --out, hence one trained baseline (the search keys it by
    the training settings and reuses it), so every sampler starts from the same one.

Run: `nice -n 10 python benchmarks/search.py [--seeds 0 1] [--skip-cost] [--skip-samplers]`;
writes benchmarks/results/search.md (and prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import time
import warnings
from pathlib import Path

from _common import machine, md_table  # benchmarks/ is on sys.path when run as a script
from rich.console import Console
from rich.markdown import Markdown

from cubesearch.plan.space import shipped_space_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TINY = "tests/assets/tiny_seg.py"
DEFAULT_OUT = RESULTS / "search.md"


# --- (a) cost model vs fvcore -----------------------------------------------------------------


def cost_model_speed(spec: str, size: tuple[int, int, int], n_plans: int, n_fvcore: int,
                     seed: int = 0) -> tuple[str, dict]:
    from cubesearch.cost.pricing import CostModel, reference_flops
    from cubesearch.models.load import load_model
    from cubesearch.plan.conversion import convert
    from cubesearch.plan.sites import find_sites
    from cubesearch.plan.space import SearchSpace

    model = load_model(spec)
    t0 = time.perf_counter()
    report = find_sites(model, input_size=size)
    t_sites = time.perf_counter() - t0
    space = SearchSpace.load("default")
    sites = list(report.sites)
    rng = random.Random(seed)
    # router='none' with depth > 1 also needs C_out % 4 == 0 (the second layer's input), which
    # SearchSpace.site_combos does not check (smp's segmentation head has C_out = 1): skip those.
    combos = {s.name: [c for c in space.site_combos(s)
                       if not (c.router == "none" and c.depth > 1 and s.out_channels % 4)]
              for s in sites}
    plans = []
    for _ in range(n_plans):
        plans.append({s.name: rng.choice(combos[s.name]) for s in sites if rng.random() < 0.5})

    cost = CostModel.from_report(report)  # tables empty: the first plans fill them
    t0 = time.perf_counter()
    cold = [cost.flops(p) for p in plans]
    t_cold = time.perf_counter() - t0
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        warm = [cost.flops(p) for p in plans]
    t_warm = (time.perf_counter() - t0) / reps
    assert warm == cold

    fv_times, mismatches = [], 0
    for p in plans[:n_fvcore]:
        from cubesearch.plan.plan import Plan

        plan = Plan(model=spec, model_kwargs={"num_classes": 1, "in_channels": 3},
                    input_size=size, sites=p)
        t0 = time.perf_counter()
        converted = convert(model, plan)
        fv = reference_flops(converted, size)
        fv_times.append(time.perf_counter() - t0)
        mismatches += int(fv != cost.flops(p))
    fv_plan_s = 1 / statistics.median(fv_times)
    cold_s, warm_s = n_plans / t_cold, n_plans / t_warm
    mean_sites = statistics.mean(len(p) for p in plans)
    rows = [
        ["CostModel, tables cold (first use fills them)", f"{cold_s:,.0f}",
         f"{t_cold / n_plans * 1e6:,.0f} µs", f"{cold_s / fv_plan_s:,.0f}×"],
        ["CostModel, tables warm", f"{warm_s:,.0f}", f"{t_warm / n_plans * 1e6:,.1f} µs",
         f"{warm_s / fv_plan_s:,.0f}×"],
        ["fvcore (convert + count, eval mode)", f"{fv_plan_s:.3f}",
         f"{statistics.median(fv_times):.2f} s", "1×"],
    ]
    text = (f"`{spec}` at {size[0]}×{size[1]}×{size[2]}: {len(sites)} eligible sites "
            f"(find_sites incl. the base fvcore count: {t_sites:.1f} s, once per study); "
            f"{n_plans} random plans of the default space's knobs over every site "
            f"(≈{mean_sites:.1f} sites replaced each); fvcore on {n_fvcore} of them (median). "
            f"CostModel == fvcore on {n_fvcore - mismatches}/{n_fvcore} plans.\n\n"
            + md_table(["method", "plans/s", "per plan", "speed-up vs fvcore"], rows))
    return text, {"cold": cold_s, "warm": warm_s, "fvcore": fv_plan_s, "mismatches": mismatches}


# --- (b) samplers ------------------------------------------------------------------------------


def first_n_points(study, n: int):
    """The points of the first `n` trained trials (by trial number), with the over-budget plans
    the sampler proposed before the n-th: `--trials` counts trained trials."""
    from optuna.trial import TrialState

    from cubesearch.search import study_points

    done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                  key=lambda t: t.number)
    keep, trained = set(), 0
    for t in done:
        if trained >= n:
            break
        keep.add(t.number)
        trained += not t.user_attrs.get("infeasible")
    return [p for p in study_points(study) if p.trial in keep], trained


def trial_stats(study) -> dict:
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None]
    dur = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    trained = [t for t in complete if not t.user_attrs.get("infeasible")]
    total = sum(dur)
    return {"trials": len(complete), "trained": len(trained),
            "infeasible": len(complete) - len(trained),
            "failed": sum(t.state == TrialState.FAIL for t in trials), "seconds": total,
            "per_hour": 3600 * len(complete) / total if total else float("nan"),
            "trained_median_s": statistics.median(
                (t.datetime_complete - t.datetime_start).total_seconds() for t in trained)
            if trained else float("nan")}


def run_samplers(args) -> tuple[str, dict]:
    from cubesearch.search import search
    from cubesearch.search.pareto import hypervolume

    space = Path(args.work) / "space-all.yaml"
    space.parent.mkdir(parents=True, exist_ok=True)
    text = shipped_space_text("default")
    space.write_text("\n".join("sites: all" if line.startswith("sites:") else
                               "name: bench-all" if line.startswith("name:") else line
                               for line in text.splitlines()) + "\n")
    budgets = {"nsga2": args.trials, "tpe": args.trials, "random": args.random_trials}
    common = dict(space=str(space), input_size=(3, args.flops_size, args.flops_size),
                  tile_size=args.tile, train_tiles=args.train_tiles, val_tiles=args.val_tiles,
                  epochs_per_trial=args.epochs_per_trial, baseline_epochs=args.baseline_epochs,
                  batch_size=8)
    results: dict[str, dict[int, dict]] = {s: {} for s in budgets}
    from cubesearch.models.load import load_model
    from cubesearch.plan.sites import find_sites

    args.n_sites = len(find_sites(load_model(args.model), input_size=(3, args.tile, args.tile),
                                  flops=False).sites)
    for seed in args.seeds:
        order = list(budgets)
        if seed % 2:  # alternate the order so drift in the machine's load hits every sampler
            order.reverse()
        out = Path(args.work) / f"seed{seed}"  # one --out per seed: its studies share the baseline
        if out.exists():
            shutil.rmtree(out)
        for sampler in order:
            t0 = time.perf_counter()
            res = search(args.model, args.budget, sampler=sampler, trials=budgets[sampler], strategy="trials",
                         out=str(out), study=f"{sampler}-seed{seed}", seed=seed, progress=False,
                         **common)
            wall = time.perf_counter() - t0
            base_gflops = res.baseline.gflops
            ref = base_gflops * 1.1
            hv = {}
            for n in sorted({10, 20, 30, args.trials, args.random_trials}):
                if n <= budgets[sampler]:
                    pts, _ = first_n_points(res.study, n)
                    hv[n] = hypervolume(pts, ref, 0.0)
            stats = trial_stats(res.study)
            results[sampler][seed] = {"hv": hv, "wall": wall, "base_gflops": base_gflops,
                                      "base_iou": res.baseline.iou, "front": len(res.front),
                                      "budget_gflops": res.budget_gflops, **stats}
            print(json.dumps({"sampler": sampler, "seed": seed, **results[sampler][seed]},
                             default=str), flush=True)
    return sampler_report(args, results), results


def fmt_spread(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return (f"{statistics.mean(values):.{digits}f} (min {min(values):.{digits}f}, "
            f"max {max(values):.{digits}f})")


def sampler_report(args, results: dict) -> str:
    ns = sorted({n for per in results.values() for r in per.values() for n in r["hv"]})
    rows = []
    for sampler, per in results.items():
        seeds = sorted(per)
        row = [sampler + (" (default)" if sampler == "nsga2" else "")]
        for n in ns:
            vals = [per[s]["hv"][n] for s in seeds if n in per[s]["hv"]]
            row.append(fmt_spread(vals) if vals else "—")
        tot_trials = sum(per[s]["trials"] for s in seeds)
        tot_sec = sum(per[s]["seconds"] for s in seeds)
        trained = sum(per[s]["trained"] for s in seeds)
        wall = sum(per[s]["wall"] for s in seeds) / 60
        row += [f"{wall:.1f}", f"{3600 * tot_trials / tot_sec:,.0f}", f"{3600 * trained / tot_sec:,.0f}",
                f"{trained}/{tot_trials}",
                f"{statistics.median(per[s]['trained_median_s'] for s in seeds):.1f}",
                str(sum(per[s]["failed"] for s in seeds))]
        rows.append(row)
    header = (["sampler"] + [f"HV @ {n}" for n in ns]
              + ["study wall min (all seeds)", "trials/h", "trained trials/h",
                 "trained/all", "median s per trained trial",
                 "failed"])
    per_seed = []
    for seed in args.seeds:
        nsga = results["nsga2"][seed]["hv"].get(args.trials)
        rnd = results["random"][seed]["hv"].get(args.random_trials)
        per_seed.append((seed, nsga, rnd))
    verdicts = "; ".join(f"seed {s}: NSGA-II@{args.trials} {a:.4f} vs random@{args.random_trials} "
                         f"{b:.4f} → {'met' if a >= b else 'NOT met'}" for s, a, b in per_seed)
    met_all = all(a >= b for _, a, b in per_seed)
    any_seed = next(iter(results["nsga2"].values()))
    scaled = ("" if (args.trials, args.random_trials) == (30, 60) else
              f" The issue states the target at 30 vs 60 trials; this run is scaled down to "
              f"{args.trials} vs {args.random_trials} to fit the time box on this machine, so "
              f"it is a weaker test (NSGA-II's population is max(4, trials // 4)).")
    return (f"Model `{args.model}` ({args.n_sites} eligible 3×3 convs, every one searchable: the "
            f"default space's knobs with `sites: all`), budget {args.budget} "
            f"({any_seed['budget_gflops']:.4f} of {any_seed['base_gflops']:.4f} GFLOPs at "
            f"3×{args.flops_size}×{args.flops_size}); synthetic data, {args.train_tiles} training "
            f"/ {args.val_tiles} validation tiles of {args.tile}×{args.tile}; baseline "
            f"{args.baseline_epochs:g} epochs (IoU {any_seed['base_iou']:.3f}, trained once per "
            f"seed and shared), {args.epochs_per_trial:g} epoch(s) per trial warm-started from it after "
            f"the search's default local distillation of the blocks; "
            f"seeds {', '.join(map(str, args.seeds))}. Trials = trained trials (as `--trials` counts "
            f"them), the two enqueued references (baseline, FullCube) included; over-budget plans "
            f"are rejected by the cost model without training and not counted. HV reference point "
            f"(baseline GFLOPs × 1.1, IoU 0); HV @ N = hypervolume of the feasible points among "
            f"the first N trained trials (mean over "
            f"seeds, min/max across them). trials/h from the trials' own start/complete times "
            f"(load-dependent).\n\n"
            + md_table(header, rows)
            + f"\n\nTarget (NSGA-II's HV after {args.trials} trials ≥ random's after "
            f"{args.random_trials}): {verdicts}. **{'Met' if met_all else 'Not met'}"
            f"{' on every seed' if met_all and len(per_seed) > 1 else ''}"
            f"{'' if (args.trials, args.random_trials) == (30, 60) else ' at this scaled-down budget'}"
            f".**" + scaled + " Under a budget below 100% the unconverted baseline is itself over "
            "budget: it is recorded infeasible and never counts toward the HV; trials whose "
            "short training ends with IoU 0 (all background) add nothing either.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-samplers", action="store_true")
    ap.add_argument("--cost-model", default="smp:Unet:resnet18")
    ap.add_argument("--cost-size", type=int, default=512)
    ap.add_argument("--plans", type=int, default=2000)
    ap.add_argument("--fvcore-plans", type=int, default=5)
    ap.add_argument("--model", default=TINY)
    ap.add_argument("--budget", default="60%")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--random-trials", type=int, default=60)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--flops-size", type=int, default=128)
    ap.add_argument("--train-tiles", type=int, default=96)
    ap.add_argument("--val-tiles", type=int, default=48)
    ap.add_argument("--epochs-per-trial", type=float, default=2)
    ap.add_argument("--baseline-epochs", type=float, default=8)
    ap.add_argument("--work", default="/tmp/cubesearch-bench-search")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args()
    os.environ.setdefault("CUBESEARCH_NO_PROGRESS", "1")
    warnings.filterwarnings("ignore")

    t_start = time.perf_counter()
    parts = ["# Search benchmark (`benchmarks/search.py`)\n"]
    if not args.skip_cost:
        text, _ = cost_model_speed(args.cost_model, (3, args.cost_size, args.cost_size),
                                   args.plans, args.fvcore_plans)
        parts.append("## Cost model vs fvcore\n\n" + text + "\n")
        print(text, flush=True)
    if not args.skip_samplers:
        text, raw = run_samplers(args)
        parts.append("## Samplers: NSGA-II (default) vs TPE vs random\n\n" + text + "\n")
        Path(args.work, "raw.json").write_text(json.dumps(raw, indent=1, default=str))
    minutes = (time.perf_counter() - t_start) / 60
    parts.insert(1, f"Machine: {machine()}. Took {minutes:.1f} min. Command: "
                    f"`{' '.join(['python benchmarks/search.py', *os.sys.argv[1:]])}`.\n")
    report = "\n".join(parts)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if (args.skip_cost or args.skip_samplers) and out == DEFAULT_OUT:  # keep the other section
        out = out.with_name(out.stem + ("-samplers" if args.skip_cost else "-cost") + out.suffix)
    out.write_text(report)
    Console(width=140).print(Markdown(report))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
