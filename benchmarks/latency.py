"""Latency benchmark: the latency model against measured whole models, and the latency front
against the FLOPs front (issue 18).

Per model (default `smp:Unet:resnet18` and `examples/unet.py`, 3×512×512, batch 1, CPU):

1. `profile`: the latency table for the benchmark's space (timed; ops deduplicated by shape).
2. `calibration`: K random plans measured as whole models, a per-device `Correction` fitted.
3. `validation`: N other random plans (the share of sites replaced stratified over [0, 1], so
   they span the FLOPs range), each predicted (plain sum and corrected) and measured as a whole
   model in deploy form (eval, blocks folded, the table's layout). Plans are timed round-robin
   in groups with the unconverted model; a plan's measured time is scaled by the table's base
   over the base measured alongside it (load drift), its raw time is kept too. Medians after
   warm-up.
4. `fronts`: from the cost models alone (no training, so no IoU): for k = sites replaced, the
   plan with the fewest FLOPs (each site's lowest-FLOPs config, the k largest savings) and the
   plan with the lowest predicted latency; a few k measured as whole models. Which sites each
   replaces, and how much measured time the FLOPs-optimal plan leaves on the table.

    nice -n 10 python benchmarks/latency.py                  # both models (≈ 30–60 min on 2 cores)
    python benchmarks/latency.py --models smp:Unet:resnet18 --plans 20

Writes benchmarks/results/latency.md and latency.json (`--out` for another folder).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import machine  # noqa: E402  benchmarks/ is on sys.path when run as a script

from cubesearch.cost import CostModel  # noqa: E402
from cubesearch.latency import (  # noqa: E402
    LatencyModel,
    LatencyTable,
    device_fingerprint,
    fit_correction,
    measure_plans,
    profile_latency,
)
from cubesearch.models import load_model  # noqa: E402
from cubesearch.sites import find_sites, parse_input_size  # noqa: E402
from cubesearch.space import SearchSpace  # noqa: E402

# A narrower space than `default` for the large U-Net (its 14 site shapes at up to 512×512 would
# take 144 block configs each): the knobs that move FLOPs and time most.
BENCH_SPACE = {"name": "latency-bench", "sites": "all", "mode": "per_site",
               "knobs": {"lattice_stride": [1, 2], "groups": [1, 4], "router": ["pre"],
                         "attention": [True, False], "depth": [1], "fusion_kernel": [1, 3],
                         "act": ["gelu"]}}
SPACES = {"smp:Unet:resnet18": "default", "examples/unet.py": "bench"}


def load() -> float:
    return os.getloadavg()[0]


def errors(pred: list[float], meas: list[float]) -> dict[str, Any]:
    errs = [(p - m) / m * 100 for p, m in zip(pred, meas, strict=True)]
    a = sorted(abs(e) for e in errs)
    return {"within_10pct_share": sum(e <= 10 for e in a) / len(a),
            "within_5pct_share": sum(e <= 5 for e in a) / len(a),
            "median_abs_error_pct": statistics.median(a),
            "p90_abs_error_pct": a[min(len(a) - 1, int(0.9 * len(a)))],
            "max_abs_error_pct": a[-1], "mean_error_pct": statistics.fmean(errs),
            "errors_pct": [round(e, 2) for e in errs]}


def greedy_fronts(space: SearchSpace, sites: list[Any], cost: CostModel, lat: LatencyModel
                  ) -> tuple[list[dict], list[dict]]:
    """Plans of k replaced sites (k = 1..) minimising FLOPs, and minimising predicted latency."""
    def best(metric):
        savings = []
        for s in sites:
            cfg = min(space.site_combos(s), key=lambda c, s=s: metric(s.name, c))
            savings.append((metric(s.name, cfg), s.name, cfg))
        savings.sort(key=lambda t: t[0])
        plans, plan = [], {}
        for delta, name, cfg in savings:
            if delta >= 0:
                break
            plan = {**plan, name: cfg}
            plans.append(plan)
        return plans

    base_f = cost.flops({})
    flops_plans = best(lambda n, c: cost.flops({n: c}) - base_f)
    lat_plans = best(lambda n, c: lat.predict_us({n: c}) - lat.predict_us({}))
    return flops_plans, lat_plans


def run_model(spec: str, args: argparse.Namespace, log) -> dict[str, Any]:
    size = parse_input_size(args.input_size)
    name = args.space or SPACES.get(spec, "default")
    space = SearchSpace.from_dict(BENCH_SPACE) if name == "bench" else SearchSpace.load(name)
    model = load_model(spec).eval()
    report = find_sites(model, size)
    cost = CostModel(report)
    searchable = space.searchable(report.sites)
    device = torch.device("cpu")
    fp = device_fingerprint(device, threads=args.threads, batch=1, dtype=torch.float32)
    table = LatencyTable(fingerprint=fp)
    out: dict[str, Any] = {"model": spec, "space": space.name, "sites": len(searchable),
                           "load_start": load(), "repeats": args.repeats, "warmup": args.warmup,
                           "profile_repeats": args.profile_repeats, "calibrate": args.calibrate,
                           "threads": args.threads}
    log(f"{spec}: profiling {len(searchable)} sites, space {space.name} (load {load():.1f})")
    done = [0, 0]

    def progress(n: int, what: str) -> None:
        done[0] += n
        if done[0] >= done[1] + 100:  # a line every 100 ops
            done[1] = done[0]
            log(f"    {done[0]} ops measured ({what}; load {load():.1f})")

    stats = profile_latency(model, report, space, spec=spec, table=table, device=device,
                            dtype=torch.float32, repeats=args.profile_repeats, warmup=args.warmup,
                            progress=progress)
    table.save(Path(args.tables) / f"latency-table-{Path(spec).stem.replace(':', '_')}.json")
    out["profile"] = {**stats.to_dict(), "load_end": load()}
    log(f"  profile: {stats.ops_measured} ops in {stats.seconds:.0f} s, layout {stats.layout}, "
        f"base {stats.base_us / 1e3:.1f} ms (load {load():.1f})")
    lat = LatencyModel(table, stats.key)
    rng = random.Random(args.seed)
    n, k = args.plans, args.calibrate
    calib = [space.random_plan(searchable, rng, share=(i + 0.5) / k) for i in range(k)]
    valid = [space.random_plan(searchable, rng, share=(i + 0.5) / n) for i in range(n)]
    t0 = time.perf_counter()
    log(f"  measuring {k + n} whole models (load {load():.1f})")
    meas = measure_plans(model, calib + valid, layout=stats.layout, device=device,
                         dtype=torch.float32, batch=1, input_size=size, repeats=args.repeats,
                         warmup=args.warmup, threads=args.threads, seed=args.seed,
                         progress=lambda n, what: log(f"    +{n} {what} (load {load():.1f})"))
    out["measure_seconds"] = time.perf_counter() - t0
    base = lat.base_us
    norm = [m * base / b for m, b in meas]
    samples = [(*lat.terms(p), m) for p, m in zip(calib, norm[:k], strict=True)]
    corr = fit_correction(samples, base)
    lat.correction = corr
    raw_pred = [lat.raw_us(p) for p in valid]
    cor_pred = [lat.predict_us(p) for p in valid]
    mv, mv_raw = norm[k:], [m for m, _ in meas[k:]]
    out["validation"] = {
        "plans": n, "calibration_plans": k, "correction": corr.to_dict(),
        "raw": errors(raw_pred, mv), "corrected": errors(cor_pred, mv),
        "raw_vs_unscaled": errors(raw_pred, mv_raw), "corrected_vs_unscaled": errors(cor_pred, mv_raw),
        "base_alongside_ms": [round(b / 1e3, 2) for _, b in meas],
        "rows": [{"sites": len(p), "gflops": cost.flops(p) / 1e9, "pred_raw_ms": r / 1e3,
                  "pred_ms": c / 1e3, "measured_ms": m / 1e3, "measured_unscaled_ms": u / 1e3}
                 for p, r, c, m, u in zip(valid, raw_pred, cor_pred, mv, mv_raw, strict=True)],
    }
    # overall within-10% of the better of the two predictions is what the README quotes
    out["within_10pct_share"] = out["validation"]["corrected"]["within_10pct_share"]
    out["median_abs_error_pct"] = out["validation"]["corrected"]["median_abs_error_pct"]
    out["raw_within_10pct_share"] = out["validation"]["raw"]["within_10pct_share"]
    out["raw_median_abs_error_pct"] = out["validation"]["raw"]["median_abs_error_pct"]
    log(f"  validation: within ±10 % raw {out['raw_within_10pct_share']:.0%}, corrected "
        f"{out['within_10pct_share']:.0%}; median |err| raw {out['raw_median_abs_error_pct']:.1f} %"
        f", corrected {out['median_abs_error_pct']:.1f} % (load {load():.1f})")

    flops_plans, lat_plans = greedy_fronts(space, searchable, cost, lat)
    fronts: dict[str, Any] = {
        "flops_front_sites": [len(p) for p in flops_plans],
        "latency_front_sites": [len(p) for p in lat_plans],
        "flops_optimal_all": sorted(flops_plans[-1]) if flops_plans else [],
        "latency_optimal_all": sorted(lat_plans[-1]) if lat_plans else [],
    }
    # compare at equal sites replaced: a few k on both fronts, measured
    ks = sorted({max(1, round(f * len(lat_plans))) for f in (0.25, 0.5, 1.0)}) if lat_plans else []
    pairs = [(flops_plans[kk - 1], lat_plans[kk - 1]) for kk in ks if kk <= len(flops_plans)]
    flat = [p for pair in pairs for p in pair]
    if flops_plans:
        flat.append(flops_plans[-1])  # the lowest-FLOPs plan overall
    m2 = measure_plans(model, flat, layout=stats.layout, device=device, dtype=torch.float32,
                       batch=1, input_size=size, repeats=args.repeats, warmup=args.warmup,
                       threads=args.threads, seed=args.seed) if flat else []
    m2n = [m * base / b for m, b in m2]
    rows = []
    for i, (fp_plan, lp_plan) in enumerate(pairs):
        rows.append({
            "k": len(lp_plan),
            "flops_plan": {"gflops": cost.flops(fp_plan) / 1e9, "pred_ms": lat.predict_us(fp_plan) / 1e3,
                           "measured_ms": m2n[2 * i] / 1e3, "sites": sorted(fp_plan),
                           "configs": {n: c.short() for n, c in fp_plan.items()}},
            "latency_plan": {"gflops": cost.flops(lp_plan) / 1e9, "pred_ms": lat.predict_us(lp_plan) / 1e3,
                             "measured_ms": m2n[2 * i + 1] / 1e3, "sites": sorted(lp_plan),
                             "configs": {n: c.short() for n, c in lp_plan.items()}},
            "left_on_table_pct": (m2n[2 * i] - m2n[2 * i + 1]) / m2n[2 * i] * 100})
    fronts["pairs"] = rows
    if flops_plans:
        lowest = flops_plans[-1]
        fronts["lowest_flops_plan"] = {"sites": len(lowest), "gflops": cost.flops(lowest) / 1e9,
                                       "pred_ms": lat.predict_us(lowest) / 1e3,
                                       "measured_ms": m2n[-1] / 1e3}
    fronts["fastest_plan"] = {"sites": len(lat_plans[-1]) if lat_plans else 0,
                              "pred_ms": lat.predict_us(lat_plans[-1] if lat_plans else {}) / 1e3}
    fronts["base_ms"] = base / 1e3
    fronts["base_gflops"] = cost.flops({}) / 1e9
    out["fronts"] = fronts
    out["load_end"] = load()
    log(f"  fronts: {len(lat_plans)} sites worth replacing for latency, {len(flops_plans)} for "
        f"FLOPs (load {load():.1f})")
    return out


def write_md(results: dict[str, Any], path: Path) -> None:
    lines = ["# Latency model and latency front (issue 18)", "",
             f"Machine: {results['machine']}. Load average (1 min) at start {results['load_start']:.1f}, "
             f"at end {results['load_end']:.1f} (other jobs shared the 2 cores: the figures are "
             f"noisier than on an idle machine). Input {results.get('input_size', '3×512×512')}, "
             "batch 1, float32, deploy form (eval, blocks folded, the faster layout of the "
             "unconverted model). Medians of the timed runs after warm-up (per model below), plans "
             "timed round-robin with the unconverted model; a plan's time is scaled by the table's "
             "base over the base measured alongside it (load drift).", ""]
    lines += ["| model | space | sites | runs (warm-up + timed) | load during | profile (ops, s) | "
              "base ms | within ±10 % raw | within ±10 % corrected | median abs err raw | corrected | "
              "correction a, b, c (µs) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results["models"]:
        v, p = r["validation"], r["profile"]
        c = v["correction"]
        lines.append(
            f"| {r['model']} | {r['space']} | {r['sites']} | "
            f"{r.get('warmup', results.get('warmup'))} + {r.get('repeats', results.get('repeats'))} | "
            f"{r['load_start']:.1f}–{r.get('load_end', r['load_start']):.1f} | "
            f"{p['ops_measured']}, {p['seconds']:.0f} | "
            f"{p['base_us'] / 1e3:.1f} | {v['raw']['within_10pct_share']:.0%} | "
            f"{v['corrected']['within_10pct_share']:.0%} | {v['raw']['median_abs_error_pct']:.1f} % | "
            f"{v['corrected']['median_abs_error_pct']:.1f} % | {c['a']:.2f}, {c['b']:.2f}, {c['c']:.0f} |")
    for r in results["models"]:
        v = r["validation"]
        lines += ["", f"## {r['model']}: {v['plans']} validation plans ({v['calibration_plans']} more "
                  "fitted the correction)", "",
                  "| sites replaced | GFLOPs | predicted raw ms | predicted ms | measured ms | error |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for row in sorted(v["rows"], key=lambda t: t["gflops"]):
            err = (row["pred_ms"] - row["measured_ms"]) / row["measured_ms"] * 100
            lines.append(f"| {row['sites']} | {row['gflops']:.2f} | {row['pred_raw_ms']:.1f} | "
                         f"{row['pred_ms']:.1f} | {row['measured_ms']:.1f} | {err:+.1f} % |")
        f = r["fronts"]
        lines += ["", f"Fronts of cost (cost models only, no training): replacing the k sites with "
                  f"the largest savings. {len(f['latency_front_sites'])} sites save predicted time, "
                  f"{len(f['flops_front_sites'])} save FLOPs. Unconverted: {f['base_gflops']:.2f} GFLOPs, "
                  f"{f['base_ms']:.1f} ms.", "",
                  "| k | FLOPs-optimal GFLOPs | its measured ms | latency-optimal GFLOPs | its measured ms "
                  "| time the FLOPs plan leaves |", "|---:|---:|---:|---:|---:|---:|"]
        for row in f["pairs"]:
            a, b = row["flops_plan"], row["latency_plan"]
            lines.append(f"| {row['k']} | {a['gflops']:.2f} | {a['measured_ms']:.1f} | {b['gflops']:.2f} "
                         f"| {b['measured_ms']:.1f} | {row['left_on_table_pct']:.1f} % |")
        if "lowest_flops_plan" in f:
            lo = f["lowest_flops_plan"]
            lines += ["", f"Lowest-FLOPs plan ({lo['sites']} sites): {lo['gflops']:.2f} GFLOPs, "
                      f"measured {lo['measured_ms']:.1f} ms (predicted {lo['pred_ms']:.1f})."]
        only_f = sorted(set(f["flops_optimal_all"]) - set(f["latency_optimal_all"]))
        only_l = sorted(set(f["latency_optimal_all"]) - set(f["flops_optimal_all"]))
        lines += ["", f"Sites the FLOPs front replaces but the latency front keeps as convs: "
                  f"{', '.join(only_f) or 'none'}.",
                  f"Sites only the latency front replaces: {', '.join(only_l) or 'none'}."]
    lines += ["", "The GPU table was not measured (no GPU in this session)."]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smp:Unet:resnet18,examples/unet.py")
    ap.add_argument("--input-size", default="3x512x512")
    ap.add_argument("--space", default=None, help="a space for every model (bench: the "
                    "benchmark's narrow one); default: default for smp, bench for the U-Net")
    ap.add_argument("--plans", type=int, default=20)
    ap.add_argument("--calibrate", type=int, default=6)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch threads (default: torch's count here)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per whole model")
    ap.add_argument("--profile-repeats", type=int, default=3, help="timed runs per op")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--tables", default=str(ROOT / "runs" / "latency-bench"))
    ap.add_argument("--append", action="store_true",
                    help="keep the other models' results already in latency.json")
    ap.add_argument("--md-only", action="store_true",
                    help="rewrite latency.md from latency.json without measuring")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if args.md_only:
        write_md(json.loads((out / "latency.json").read_text()), out / "latency.md")
        return
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "latency.json").read_text()) if args.append and (
        out / "latency.json").exists() else None
    results: dict[str, Any] = {"machine": machine(args.threads), "load_start": load(),
                               "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads,
                               "input_size": args.input_size.replace("x", "×"),
                               "models": []}

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    specs = [s for s in args.models.split(",") if s]
    if previous:  # keep the other models' figures (and the earliest start's load)
        results["models"] = [m for m in previous["models"] if m["model"] not in specs]
        results["load_start"] = previous.get("load_start", results["load_start"])
    for spec in specs:
        results["models"].append(run_model(spec, args, log))
        results["load_end"] = load()
        (out / "latency.json").write_text(json.dumps(results, indent=1) + "\n")
        write_md(results, out / "latency.md")
    log(f"wrote {out / 'latency.md'} and latency.json")


if __name__ == "__main__":
    main()
