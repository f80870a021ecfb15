"""Deployment benchmark (issue 24): what a Cube plan costs in time where models are deployed.

1. **Per-site map** (smp:Unet:resnet18 at 3×512², batch 1): for every distinct shape of its
   searchable 3×3 convs, the conv and the folded block of each config in `CONFIGS` (depth 1; a
   depth-2 block is two units, about twice the time), timed side by side under PyTorch eager
   (channels_last), `torch.compile` (Inductor CPU) and ONNX Runtime CPU: block / conv per
   backend. `torch.compile` gets the `COMPILE_CONFIGS` subset (each shape and config is a fresh
   Inductor build of ~5–10 s). The paper's default block is also timed in the fold as it was
   before this issue (`BEFORE`, read from git) for the before/after ratio.
2. **Whole models** (smp:Unet:resnet18 and examples/unet.py at 3×512², r18 at the demo's 64²):
   unconverted vs FullCube (the default block at every searchable site) vs the decoder preset
   (the default block at the decoder's sites), in deploy form (every block folded), and FullCube
   in the fold as it was before (`BEFORE`); plus, for r18 at 512², the plan the map picks for
   ONNX Runtime (each site's fastest config where it beats the conv). Every variant under every
   backend is timed round-robin in one loop (medians after warm-up), so load drift hits all alike.

Threads: torch and ONNX Runtime intra-op threads = `--threads` (default 2), ORT inter-op 1. The
load average is recorded before and after each section.

    nice -n 0 python benchmarks/deploy.py                       # everything (≈ 40–60 min, 2 cores)
    python benchmarks/deploy.py --skip-map --models smp:Unet:resnet18 --sizes 64

Writes benchmarks/results/deploy.md, deploy.json and deploy-map.png (`--out` for another folder).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import machine, md_table  # noqa: E402  benchmarks/ is on sys.path when run as a script

from cubesearch.blocks import CubeBlock, CubeConfig, fold_blocks  # noqa: E402
from cubesearch.cost.latency.backends import ort_runner  # noqa: E402
from cubesearch.cost.latency.model import SiteShape  # noqa: E402
from cubesearch.cost.pricing import CostModel  # noqa: E402
from cubesearch.exporting.export import write_onnx  # noqa: E402
from cubesearch.models.load import load_model  # noqa: E402
from cubesearch.plan.conversion import convert  # noqa: E402
from cubesearch.plan.plan import Plan  # noqa: E402
from cubesearch.plan.sites import find_sites  # noqa: E402
from cubesearch.plan.space import SearchSpace  # noqa: E402
from cubesearch.search.ablation import preset_sites  # noqa: E402

BACKENDS = ("eager", "compile", "ort")
BEFORE = "77d548e"  # main before issue 24: the fold with grouped lattice convs, slices, gathers
CONFIGS = {  # depth 1; a representative subset of the default space's 144 configs per site
    "s2 g4 pre att k3": CubeConfig(),
    "s2 g4 pre k1": CubeConfig(attention=False, fusion_kernel=1),
    "s2 g1 pre att k3": CubeConfig(groups=1),
    "s2 g4 none att k3": CubeConfig(router="none"),
    "s1 g4 pre att k3": CubeConfig(lattice_stride=1),
    "s1 g1 pre k1": CubeConfig(lattice_stride=1, groups=1, attention=False, fusion_kernel=1),
}
COMPILE_CONFIGS = ("s2 g4 pre att k3", "s2 g4 pre k1")
DEFAULT = "s2 g4 pre att k3"


def load() -> float:
    return round(os.getloadavg()[0], 2)


def before_fold() -> Callable[[CubeBlock], nn.Module] | None:
    """`FoldedCubeBlock` as it was at `BEFORE` (its source from git, run on today's layers)."""
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:cubesearch/blocks/cube.py"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("cube_before")
    exec(compile(src, f"{BEFORE}:cubesearch/blocks/cube.py", "exec"), module.__dict__)
    return lambda block: module.FoldedCubeBlock(block)


def fold_with(model: nn.Module, fold: Callable[[CubeBlock], nn.Module]) -> nn.Module:
    """A copy in eval mode with every CubeBlock replaced by `fold(block)`."""
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        for key, child in list(parent._modules.items()):
            if isinstance(child, CubeBlock):
                parent._modules[key] = fold(child)
    return model


# --- the three backends ---------------------------------------------------------------------


def eager_fn(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    cl = torch.channels_last
    module, x = module.eval().to(memory_format=cl), x.contiguous(memory_format=cl)

    def run() -> Any:
        with torch.inference_mode():
            return module(x)
    return run


def compile_fn(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    cl = torch.channels_last
    module, x = module.eval().to(memory_format=cl), x.contiguous(memory_format=cl)
    compiled = torch.compile(module)

    def run() -> Any:
        with torch.inference_mode():
            return compiled(x)
    run()  # the Inductor build happens here, not in the timed calls
    return run


def ort_fn(module: nn.Module, x: torch.Tensor, folder: Path, threads: int) -> Callable[[], Any]:
    """The `ort` latency tables' runner: `export`'s ONNX graph in an ONNX Runtime session."""
    return ort_runner(module, x, threads=threads)


def ort_op_profile(module: nn.Module, x: torch.Tensor, folder: Path, threads: int,
                   runs: int = 5) -> dict[str, Any]:
    """ONNX Runtime's own profile: per op type, the sum over nodes of each node's median ms."""
    import onnxruntime as ort

    path = Path(tempfile.mkstemp(suffix=".onnx", dir=folder)[1])
    write_onnx(module.eval(), path, tuple(x.shape[1:]))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling, opts.profile_file_prefix = True, str(folder / "ort-profile")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    walls = []
    for _ in range(2 + runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        walls.append((time.perf_counter() - t0) * 1e3)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    nodes: dict[tuple[str, str], list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            nodes.setdefault((e["args"]["op_name"], e["name"]), []).append(e["dur"] / 1e3)
    ops: dict[str, float] = {}
    counts: dict[str, int] = {}
    for (op, _), durs in nodes.items():  # the first 2 runs are warm-up
        ops[op] = ops.get(op, 0.0) + statistics.median(durs[2:] if len(durs) > 2 else durs)
        counts[op] = counts.get(op, 0) + 1
    total = sum(ops.values())
    return {"total_ms": total, "wall_ms": statistics.median(walls[2:]),
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
            "nodes": counts, "load": load()}


def make_fns(variants: dict[str, nn.Module], x: torch.Tensor, backends: dict[str, list[str]],
             folder: Path, threads: int) -> dict[str, Callable[[], Any]]:
    """`backend:variant` → callable, for the variants each backend gets."""
    fns = {}
    for backend, names in backends.items():
        for name in names:
            m = copy.deepcopy(variants[name])
            if backend == "eager":
                fns[f"eager:{name}"] = eager_fn(m, x)
            elif backend == "compile":
                fns[f"compile:{name}"] = compile_fn(m, x)
            else:
                fns[f"ort:{name}"] = ort_fn(m, x, folder, threads)
    return fns


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, float]:
    """Median ms of each callable, timed round-robin after `warmup` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in samples.items()}


# --- 1. per-site map ------------------------------------------------------------------------


def site_map(model: nn.Module, size: tuple[int, int, int], args: argparse.Namespace, folder: Path,
             log: Callable[[str], None]) -> dict[str, Any]:
    report = find_sites(model, size)
    searchable = SearchSpace.load("default").searchable(report.sites)
    shapes: dict[tuple, dict[str, Any]] = {}
    for s in searchable:
        sh = SiteShape.of(s)
        key = (sh.in_channels, sh.out_channels, sh.stride, sh.calls[0])
        shapes.setdefault(key, {"sites": [], "role": s.role})["sites"].append(s.name)
    old = before_fold()
    rows = []
    for (cin, cout, stride, (h, w)), info in shapes.items():
        x = torch.randn(1, cin, h, w, generator=torch.Generator().manual_seed(0))
        variants: dict[str, nn.Module] = {"conv": nn.Conv2d(cin, cout, 3, stride, 1, bias=False)}
        for label, cfg in CONFIGS.items():
            variants[label] = CubeBlock(cin, cout, cfg, stride=stride).eval().fold()
        if old is not None:
            variants["before"] = old(CubeBlock(cin, cout, CONFIGS[DEFAULT], stride=stride).eval())
        names = list(variants)
        backends = {"eager": names, "ort": names,
                    "compile": ["conv", *COMPILE_CONFIGS]}
        backends = {b: v for b, v in backends.items() if b in args.backends}
        t0 = time.perf_counter()
        fns = make_fns(variants, x, backends, folder, args.threads)
        build = time.perf_counter() - t0
        la = load()
        t = interleaved(fns, args.map_repeats, args.warmup)
        row = {"in": cin, "out": cout, "stride": stride, "hw": [h, w], "sites": info["sites"],
               "role": info["role"], "load_before": la, "load_after": load(),
               "conv_ms": {b: t[f"{b}:conv"] for b in backends},
               "block_ms": {b: {n: t[f"{b}:{n}"] for n in v if n != "conv"}
                            for b, v in backends.items()},
               "ratio": {b: {n: t[f"{b}:{n}"] / t[f"{b}:conv"] for n in v if n != "conv"}
                         for b, v in backends.items()}}
        rows.append(row)
        best = {b: min(r.items(), key=lambda kv: kv[1]) for b, r in row["ratio"].items()}
        log(f"  {cin}→{cout} @{h}×{w} ({len(info['sites'])} sites): build {build:.0f} s; best "
            + ", ".join(f"{b} {n} {v:.2f}×" for b, (n, v) in best.items()) + f" (load {load():.1f})")
        del fns
        torch._dynamo.reset()
    return {"model": args.map_model, "input_size": list(size), "configs": list(CONFIGS),
            "threads": args.threads,
            "compile_configs": list(COMPILE_CONFIGS), "repeats": args.map_repeats,
            "rows": rows}


def map_plan(sm: dict[str, Any], backend: str) -> dict[str, CubeConfig]:
    """Each site whose fastest mapped config beats its conv on `backend`, with that config."""
    plan = {}
    for row in sm["rows"]:
        ratios = {n: r for n, r in row["ratio"].get(backend, {}).items() if n in CONFIGS}
        if ratios:
            name, ratio = min(ratios.items(), key=lambda kv: kv[1])
            if ratio < 1.0:
                plan.update({s: CONFIGS[name] for s in row["sites"]})
    return plan


# --- 2. whole models ------------------------------------------------------------------------


def whole_models(spec: str, size: tuple[int, int, int], args: argparse.Namespace, folder: Path,
                 log: Callable[[str], None], extra_plans: dict[str, dict[str, CubeConfig]]
                 ) -> dict[str, Any]:
    threads = args.threads
    torch.set_num_threads(threads)
    model = load_model(spec).eval()
    report = find_sites(model, size)
    cost = CostModel(report)
    searchable = SearchSpace.load("default").searchable(report.sites)
    plans = {"unconverted": {}}
    for preset in ("fullcube", "decoder"):
        plans[preset] = {s.name: CubeConfig() for s in preset_sites(preset, searchable)}
    plans.update(extra_plans)
    variants: dict[str, nn.Module] = {}
    converted = {}
    for name, sites in plans.items():
        converted[name] = convert(model, Plan(model=spec, input_size=size, sites=sites)).eval()
        variants[name] = fold_blocks(converted[name])
    old = before_fold()
    if old is not None:
        variants["fullcube (before)"] = fold_with(converted["fullcube"], old)
    names = list(variants)
    backends = {b: names for b in args.backends}
    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
    la0 = load()
    t0 = time.perf_counter()
    fns = make_fns(variants, x, backends, folder, threads)
    build = time.perf_counter() - t0
    repeats = args.repeats if size[1] >= 256 else args.small_repeats
    log(f"{spec} @{size}, {threads} thread(s): {len(fns)} callables built in {build:.0f} s; "
        f"timing {repeats} rounds (load {load():.1f})")
    la1 = load()
    t = interleaved(fns, repeats, args.warmup)
    base_gflops = cost.flops({}) / 1e9
    out = {"model": spec, "input_size": list(size), "threads": threads, "repeats": repeats,
           "warmup": args.warmup,
           "load_start": la0, "load_timing_start": la1, "load_end": load(),
           "variants": {}}
    for name in names:
        plan_name = name.removesuffix(" (before)")
        gflops = cost.flops(plans[plan_name]) / 1e9
        out["variants"][name] = {
            "sites": len(plans[plan_name]), "gflops": gflops, "flops_ratio": gflops / base_gflops,
            "ms": {b: t[f"{b}:{name}"] for b in backends},
            "ratio": {b: t[f"{b}:{name}"] / t[f"{b}:unconverted"] for b in backends}}
    for name, v in out["variants"].items():
        log(f"  {name}: FLOPs {v['flops_ratio']:.2f}×; " + ", ".join(
            f"{b} {v['ms'][b]:.1f} ms ({v['ratio'][b]:.2f}×)" for b in backends))
    del fns
    torch._dynamo.reset()
    if "ort" in backends and args.profile and size[1] >= 256:
        out["ort_op_profile"] = {n: ort_op_profile(variants[n], x, folder, threads)
                                 for n in ("unconverted", "fullcube")}
    return out


def block_op_profiles(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    """ORT's per-op profile of the paper block, folded, at two of r18's encoder shapes."""
    rows = []
    for cin, hw in ((64, 128), (256, 32)):
        x = torch.randn(1, cin, hw, hw, generator=torch.Generator().manual_seed(0))
        conv = nn.Conv2d(cin, cin, 3, 1, 1, bias=False)
        for label, cfg in (("s2 g4 pre att k3", CONFIGS[DEFAULT]), ("s2 g4 pre k1", CONFIGS["s2 g4 pre k1"])):
            block = CubeBlock(cin, cin, cfg).eval().fold()
            rows.append({"shape": f"{cin}→{cin} @{hw}²", "config": label,
                         "conv": ort_op_profile(conv, x, folder, args.threads),
                         "block": ort_op_profile(block, x, folder, args.threads)})
    return rows


# --- report ---------------------------------------------------------------------------------


def plot_map(sm: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    backends = [b for b in BACKENDS if b in sm["rows"][0]["ratio"]]
    fig, axes = plt.subplots(1, len(backends), figsize=(5.2 * len(backends), 6.5), squeeze=False)
    labels = [f"{r['in']}→{r['out']} @{r['hw'][0]}² ×{len(r['sites'])}" for r in sm["rows"]]
    for ax, b in zip(axes[0], backends, strict=True):
        cols = [c for c in (*CONFIGS, "before") if c in sm["rows"][0]["ratio"][b]]
        data = np.array([[r["ratio"][b].get(c, np.nan) for c in cols] for r in sm["rows"]])
        im = ax.imshow(np.log2(data), cmap="RdYlGn_r", vmin=-2, vmax=2, aspect="auto")
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if not np.isnan(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(cols)), [c.replace(" ", "\n", 1) for c in cols], fontsize=7)
        ax.set_yticks(range(len(labels)), labels if b == backends[0] else [], fontsize=7)
        ax.set_title(f"{b}: block / conv latency")
    fig.colorbar(im, ax=axes[0].tolist(), label="log2(block / conv); green: the block is faster")
    fig.suptitle(f"{sm['model']} at {'×'.join(map(str, sm['input_size']))}: per-site map "
                 "(rows: conv shape, ×sites sharing it)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline keys of deploy.json (issue 24), each null with a reason when not measured."""
    r18 = next((m for m in result["models"] if m["model"] == "smp:Unet:resnet18"
                and m["input_size"][1] == 512 and m["threads"] == result["threads"]), None)
    out: dict[str, Any] = {}
    if r18 and "ort" in r18["variants"]["fullcube"]["ratio"]:
        out["fullcube_ort_latency_ratio"] = r18["variants"]["fullcube"]["ratio"]["ort"]
    else:
        out["fullcube_ort_latency_ratio"] = None
        out["fullcube_ort_latency_ratio_reason"] = "r18 at 3×512² not run under ONNX Runtime"
    lat = latency_results()
    demo = lat.get("demo_search") or {}
    out["best_plan_latency_ratio"] = demo.get("best_plan_latency_ratio")
    out["best_plan_iou_ratio"] = demo.get("best_plan_iou_ratio")
    out["best_plan_text"] = demo.get("best_plan_text", "benchmarks/latency.py --demo-search not run")
    if demo and out["best_plan_latency_ratio"] is not None:
        best = demo["best_plan"]
        out["best_plan_latency_ratio_from"] = (
            f"latency search on {demo['model']} at {'×'.join(map(str, demo['input_size']))}, "
            f"{demo['backend']}, budget {demo['budget']}, {demo['threads']} thread: trial "
            f"{best['trial']} at {best['flops_ratio']:.2f}× FLOPs, IoU {best['iou_ratio']:.2f}× the "
            "unconverted reference's (benchmarks/latency.py --demo-search, latency.md)")
    else:
        out["best_plan_latency_ratio_reason"] = (
            ("the stored latency search recorded no unconverted reference IoU, so none of its "
             "plans is certified usable (IoU ≥ 0.9× the reference); "
             f"{sum(r['iou'] < 5e-4 for r in demo['rows'])} of its {len(demo['rows'])} scored IoU 0 "
             "(trained one optimizer step, blocks not distilled): rerun benchmarks/latency.py "
             "--demo-search"
             if demo.get("reference_iou") is None else
             "the latency search found no usable plan (IoU ≥ 0.9× the unconverted reference) "
             "with ≥ 30 % fewer FLOPs")
            if demo else "benchmarks/latency.py --demo-search not run")
    mp = r18["variants"].get("map plan (ort)") if r18 else None
    if mp:
        out["map_plan_ort_latency_ratio"] = mp["ratio"].get("ort")
        out["map_plan_ort_flops_ratio"] = mp["flops_ratio"]
        out["map_plan_ort_sites"] = mp["sites"]
    for m in result["models"]:  # the control run, with fewer threads
        if m is not r18 and m["model"] == "smp:Unet:resnet18" and m["input_size"][1] == 512:
            t = m["threads"]
            out[f"fullcube_ort_latency_ratio_{t}_thread"] = m["variants"]["fullcube"]["ratio"].get("ort")
            if "map plan (ort)" in m["variants"]:
                mp = m["variants"]["map plan (ort)"]
                out[f"map_plan_ort_latency_ratio_{t}_thread"] = mp["ratio"].get("ort")
                out[f"map_plan_ort_flops_ratio_{t}_thread"] = mp["flops_ratio"]
    out["latency_within_10pct_share"] = lat.get("latency_within_10pct_share")
    if out["latency_within_10pct_share"] is None:
        out["latency_within_10pct_share_reason"] = "benchmarks/latency.py not run per backend"
    else:
        out["latency_within_10pct_share_by_backend"] = {
            m["backend"]: m["within_10pct_share"] for m in lat["models"]}
        out["latency_raw_within_10pct_share_by_backend"] = {
            m["backend"]: m["raw_within_10pct_share"] for m in lat["models"]}
    return out


def latency_results() -> dict[str, Any]:
    """The latency model's per-backend accuracy and the latency search, measured by
    benchmarks/latency.py (their one home); {} when it has not run per backend."""
    path = ROOT / "benchmarks" / "results" / "latency.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    return data if all("backend" in m for m in data.get("models", [])) else {}


def latency_markdown() -> list[str]:
    """The per-backend table of latency.md, and the latency search's measured front."""
    lat = latency_results()
    if not lat.get("models"):
        return []
    lines = ["## Latency model per backend (`benchmarks/latency.py`)", "",
             f"{lat.get('pinning', '')} Load average "
             f"{min(m['load_start'] for m in lat['models']):.1f}–"
             f"{max(m['load_end'] for m in lat['models']):.1f}. Share of r18 plans at "
             f"{lat.get('input_size', '3×512×512')} within ±10 % of measured (random plans, the "
             "latency search's trained plans and the latency front's); details in "
             "[latency.md](latency.md).", ""]
    header = ["model", "backend", "plans", "within ±10 % (plain sum)",
              "within ±10 % (corrected)", "median abs error, corrected", "correction a, b, c µs"]
    rows = [[m["model"], m["backend"], str(m["validation"]["all"]["corrected"]["n"]),
             f"{m['raw_within_10pct_share']:.0%}", f"**{m['within_10pct_share']:.0%}**",
             f"{m['median_abs_error_pct']:.1f} %",
             ", ".join(f"{m['validation']['correction'][k]:.2f}" for k in "abc")]
            for m in lat["models"]]
    lines += [md_table(header, rows), ""]
    d = lat.get("demo_search")
    if d:
        lines += [f"### Latency search: {d['model']} at {'×'.join(map(str, d['input_size']))}, "
                  f"{d['backend']}, budget {d['budget']}", "",
                  "Every trained feasible plan measured beside the unconverted model (× = "
                  "plan / unconverted).", ""]
        header = ["trial", "front", "FLOPs ×", "predicted ×", "measured ×", "error"]
        rows = [[str(r["trial"]), "yes" if r["front"] else "", f"{r['flops_ratio']:.2f}",
                 f"{r['pred_ratio']:.2f}", f"**{r['measured_ratio']:.2f}**",
                 f"{r['error_pct']:+.1f} %"]
                for r in sorted(d["rows"], key=lambda r: r["flops_ratio"])]
        lines += [md_table(header, rows), ""]
    return lines


def _ops_row(prof: dict[str, Any], ops: list[str]) -> list[str]:
    return [f"{prof['ops'].get(op, 0.0):.2f}" for op in ops]


def op_profile_markdown(result: dict[str, Any]) -> list[str]:
    """Where the time goes under ONNX Runtime (its own per-node profile), by op type."""
    lines = []
    r18 = next((m for m in result["models"] if "ort_op_profile" in m), None)
    if r18:
        p = r18["ort_op_profile"]
        ops = sorted({*p["unconverted"]["ops"], *p["fullcube"]["ops"]},
                     key=lambda o: -p["fullcube"]["ops"].get(o, 0.0))
        lines += [f"## Where FullCube's time goes under ONNX Runtime ({r18['model']}, "
                  f"{'×'.join(map(str, r18['input_size']))})", "",
                  "ORT's own profile (5 runs after 2 warm-up, each node's median, summed per op "
                  "type, ms; `ReorderInput/Output`: layout changes between ORT's blocked NCHWc "
                  "convs and ops that run on plain NCHW, such as the channel reductions).", "",
                  md_table(["model", "wall ms", "sum of nodes ms", *ops],
                           [[n, f"{p[n]['wall_ms']:.1f}", f"{p[n]['total_ms']:.1f}",
                             *_ops_row(p[n], ops)] for n in ("unconverted", "fullcube")]), "",
                  "Wall minus the sum of node times is what ORT spends between nodes (thread-pool "
                  "hand-offs, allocation): "
                  + ", ".join(f"{n} {p[n]['wall_ms'] - p[n]['total_ms']:.1f} ms over "
                              f"{sum(p[n]['nodes'].values())} nodes"
                              for n in ("unconverted", "fullcube")) + ".", ""]
    rows = result.get("block_op_profiles")
    if rows:
        ops = sorted({o for r in rows for o in r["block"]["ops"]},
                     key=lambda o: -sum(r["block"]["ops"].get(o, 0.0) for r in rows))
        lines += ["### The folded block per op under ONNX Runtime", "",
                  "Per op type, ms (sum of node medians); `Conv` holds the router 1×1, the "
                  "lattice conv, the 7×7 gate conv and the fusion conv; `ReduceMean`/`ReduceMax` "
                  "the channel pooling of the gate; `Erf`/`Div`/`Mul`/`Add` the GELU and the "
                  "gate product.", "",
                  md_table(["shape", "block", "conv ms", "block ms", "block / conv", *ops],
                           [[r["shape"], r["config"], f"{r['conv']['total_ms']:.2f}",
                             f"{r['block']['total_ms']:.2f}",
                             f"{r['block']['total_ms'] / r['conv']['total_ms']:.2f}",
                             *_ops_row(r["block"], ops)] for r in rows]), ""]
    return lines


def findings(result: dict[str, Any]) -> list[str]:
    """What bounds the ratios, in figures computed from this run's data."""
    lines = []
    r18 = next((m for m in result["models"] if "ort_op_profile" in m), None)
    if r18:
        p = r18["ort_op_profile"]
        u, f = p["unconverted"], p["fullcube"]
        pool = sum(f["ops"].get(o, 0.0) for o in ("ReduceMax", "ReduceMean"))
        reorder = sum(f["ops"].get(o, 0.0) - u["ops"].get(o, 0.0)
                      for o in ("ReorderInput", "ReorderOutput"))
        nu, nf = sum(u["nodes"].values()), sum(f["nodes"].values())
        lines += [
            f"- **Kernels vs dispatch (ORT, {r18['threads']} threads).** Summed over nodes, "
            f"FullCube's kernels take {f['total_ms'] / u['total_ms']:.2f}× the unconverted "
            f"model's time ({f['total_ms']:.0f} vs {u['total_ms']:.0f} ms), but its wall time "
            f"is {f['wall_ms'] / u['wall_ms']:.2f}× ({f['wall_ms']:.0f} vs {u['wall_ms']:.0f} ms): "
            f"{nf} nodes instead of {nu}, and between nodes ORT spent "
            f"{(f['wall_ms'] - f['total_ms']) / nf:.2f} ms per node (unconverted "
            f"{(u['wall_ms'] - u['total_ms']) / nu:.2f}) — thread-pool hand-offs, which on "
            "this loaded machine wait for a descheduled thread.",
            f"- **The gate's channel pooling.** ReduceMax + ReduceMean take {pool:.0f} ms "
            f"({pool / f['total_ms']:.0%} of FullCube's kernel time) and the extra layout "
            f"reorders around them and the other NCHW-only ops {reorder:.0f} ms "
            f"({reorder / f['total_ms']:.0%}): a cross-channel max has no blocked-layout kernel "
            "in ORT and cannot be folded into a conv. Configs without attention skip both."]
    by = {}
    for m in result["models"]:
        if m["model"] == "smp:Unet:resnet18" and m["input_size"][1] == 512:
            by[m["threads"]] = m
    if len(by) > 1:
        parts = [f"{t} thread(s): FullCube ORT {m['variants']['fullcube']['ratio']['ort']:.2f}×"
                 + (f", eager {m['variants']['fullcube']['ratio']['eager']:.2f}×"
                    if "eager" in m["variants"]["fullcube"]["ratio"] else "")
                 + f" (unconverted ORT {m['variants']['unconverted']['ms']['ort']:.0f} ms)"
                 for t, m in sorted(by.items(), reverse=True)]
        lines.append("- **Threads under load.** r18 at 512²: " + "; ".join(parts) + ". With "
                     "fewer threads an op never waits for a second, descheduled thread, so the "
                     "many small ops of a Cube model lose less to the load: the fewer-thread "
                     "ratio is the closer estimate of an idle machine's.")
    for sm in result.get("site_maps", []):
        for b in [b for b in BACKENDS if b in sm["rows"][0]["ratio"]]:
            wins = [r for r in sm["rows"]
                    if min(v for k, v in r["ratio"][b].items() if k in CONFIGS) < 1.0]
            sites = sum(len(r["sites"]) for r in wins)
            total = sum(len(r["sites"]) for r in sm["rows"])
            where = ", ".join(f"{r['in']}→{r['out']} @{r['hw'][0]}²" for r in wins) or "none"
            lines.append(f"- **Map, {b}, {sm['threads']} thread(s):** a mapped block beats the "
                         f"conv at {sites} of {total} sites ({where}).")
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = ["# Deployment benchmark (`benchmarks/deploy.py`)", "",
             f"Machine: {result['machine']}. ONNX Runtime {result['onnxruntime']}, "
             f"{result['threads']} intra-op threads (inter-op 1). **The machine was loaded**: "
             "another engineer's training benchmark shared the 2 cores for the whole run "
             "(load averages per section below); every ratio is of callables timed round-robin "
             "in one loop, so drift hits both sides, but absolute times are upper bounds. "
             "CUDA rows: not measured (no device lent).", "",
             f"Command: `{result['command']}`; {result['seconds'] / 60:.0f} min.", "",
             "## Headline", ""]
    for k, v in s.items():
        lines.append(f"- `{k}`: {v:.3f}" if isinstance(v, float) else f"- `{k}`: {v}")
    lines += ["", "## What bounds it", "", *findings(result), ""]
    lines += latency_markdown()
    lines += ["", "## Whole models: latency / unconverted (deploy form: blocks folded)", "",
              "Medians after warm-up; eager and compile in channels_last, ORT on NCHW input. "
              "`(before)`: the fold as it was at " + BEFORE + " (grouped lattice convs, "
              "pad-then-slice, channel gathers), same weights.", ""]
    for m in result["models"]:
        backends = list(next(iter(m["variants"].values()))["ms"])
        lines += [f"### {m['model']} at {'×'.join(map(str, m['input_size']))}, "
                  f"{m['threads']} thread(s)", "",
                  f"{m['repeats']} rounds after {m['warmup']} warm-up; load average "
                  f"{m['load_timing_start']:.1f} at the start of timing, {m['load_end']:.1f} at "
                  "the end.", ""]
        header = ["variant", "sites", "FLOPs ×"] + [f"{b} ms" for b in backends] + \
                 [f"{b} ×" for b in backends]
        rows = [[n, str(v["sites"]), f"{v['flops_ratio']:.2f}",
                 *(f"{v['ms'][b]:.1f}" for b in backends),
                 *(f"**{v['ratio'][b]:.2f}**" for b in backends)] for n, v in m["variants"].items()]
        lines += [md_table(header, rows), ""]
    lines += op_profile_markdown(result)
    for sm in result.get("site_maps", []):
        lines += [f"## Per-site map: {sm['model']} at {'×'.join(map(str, sm['input_size']))}, "
                  f"{sm['threads']} thread(s)", "",
                  f"Block / conv latency per distinct conv shape (the sites sharing it listed), "
                  f"{sm['repeats']} rounds after warm-up, batch 1. Configs: a representative "
                  f"subset of the default space (depth 1; a depth-2 block is two units); "
                  f"`torch.compile` times {', '.join(sm['compile_configs'])} only. `before`: the "
                  f"paper block ({DEFAULT}) in the fold as it was at {BEFORE}.", "",
                  f"![per-site map]({sm['plot']})", ""]
        for b in [b for b in BACKENDS if b in sm["rows"][0]["ratio"]]:
            cols = [c for c in (*CONFIGS, "before") if c in sm["rows"][0]["ratio"][b]]
            header = ["conv (sites)", "conv ms", *cols]
            rows = [[f"{r['in']}→{r['out']} @{r['hw'][0]}² ({len(r['sites'])}, {r['role']})",
                     f"{r['conv_ms'][b]:.2f}",
                     *(f"{r['ratio'][b][c]:.2f}" for c in cols)] for r in sm["rows"]]
            lines += [f"### {b}, {sm['threads']} thread(s)", "", md_table(header, rows), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smp:Unet:resnet18,examples/unet.py")
    ap.add_argument("--sizes", default="512", help="square input sizes, e.g. 512,64")
    ap.add_argument("--demo", action="store_true", default=True,
                    help="also r18 at the demo's 64² (default on)")
    ap.add_argument("--no-demo", dest="demo", action="store_false")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--control-threads", type=int, default=1,
                    help="also run the map and the map model's whole models with this many "
                         "threads (0: not); on a loaded machine fewer threads wait less on "
                         "each other")
    ap.add_argument("--repeats", type=int, default=7, help="rounds for whole models at ≥ 256²")
    ap.add_argument("--small-repeats", type=int, default=21, help="rounds at the demo's 64²")
    ap.add_argument("--map-repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--map-model", default="smp:Unet:resnet18")
    ap.add_argument("--map-size", type=int, default=512)
    ap.add_argument("--skip-map", action="store_true")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="skip ONNX Runtime's per-op profiles")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--rerender", action="store_true",
                    help="only rewrite deploy.md (and the summary keys of deploy.json) from "
                         "the deploy.json in --out")
    args = ap.parse_args()
    if args.rerender:
        path = Path(args.out) / "deploy.json"
        result = json.loads(path.read_text())
        result.pop("summary_keys", None)
        for key in result.get("summary", {}):  # the headline keys sit at the top level too
            result.pop(key, None)
        result["summary"] = summary(result)
        result["latency_model"] = latency_results() or None
        path.write_text(json.dumps({**result["summary"], **result,
                                    "summary_keys": list(result["summary"])}, indent=1))
        (Path(args.out) / "deploy.md").write_text(to_markdown(result))
        return
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    import onnxruntime

    result: dict[str, Any] = {"threads": args.threads, "onnxruntime": onnxruntime.__version__,
                              "torch": torch.__version__, "backends": args.backends,
                              "command": "python benchmarks/deploy.py " + " ".join(sys.argv[1:]),
                              "load_start": load(), "models": []}
    runs = [(spec, int(s)) for spec in args.models.split(",") for s in args.sizes.split(",")]
    if args.demo and ("smp:Unet:resnet18", 64) not in runs:
        runs.append(("smp:Unet:resnet18", 64))
    result["site_maps"] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.profile and "ort" in args.backends:
            log(f"ORT per-op profiles of the block (load {load():.1f})")
            result["block_op_profiles"] = block_op_profiles(args, Path(tmp))
        # the main thread count runs everything; the control count (fewer threads: on a loaded
        # machine they wait less on each other) the map and the map model's whole-model runs
        for threads in [args.threads] + ([args.control_threads] if args.control_threads else []):
            sec = copy.copy(args)
            sec.threads, sec.profile = threads, args.profile and threads == args.threads
            torch.set_num_threads(threads)
            extra: dict[str, dict[str, CubeConfig]] = {}
            if not args.skip_map:
                m = args.map_size
                log(f"per-site map of {args.map_model} at 3×{m}², {threads} thread(s) "
                    f"(load {load():.1f})")
                sm = site_map(load_model(args.map_model).eval(), (3, m, m), sec, Path(tmp), log)
                sm["threads"] = threads
                sm["plot"] = "deploy-map.png" if threads == args.threads else \
                    f"deploy-map-{threads}t.png"
                plot_map(sm, out / sm["plot"])
                result["site_maps"].append(sm)
                if "ort" in args.backends and (plan := map_plan(sm, "ort")):
                    extra["map plan (ort)"] = plan
            for spec, s in runs:
                if threads != args.threads and spec != args.map_model:
                    continue
                plans = extra if (spec == args.map_model and s == args.map_size) else {}
                result["models"].append(whole_models(spec, (3, s, s), sec, Path(tmp), log, plans))
    torch.set_num_threads(args.threads)
    result["load_end"] = load()
    result["seconds"] = time.perf_counter() - t_start
    result["machine"] = machine(args.threads)
    result["summary"] = summary(result)
    result["latency_model"] = latency_results() or None
    (out / "deploy.json").write_text(json.dumps({**result["summary"], **result,
                                                 "summary_keys": list(result["summary"])},
                                                indent=1, default=float))
    (out / "deploy.md").write_text(to_markdown(result))
    log(f"wrote {out / 'deploy.md'} and deploy.json ({result['seconds'] / 60:.0f} min)")


if __name__ == "__main__":
    main()
