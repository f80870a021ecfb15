"""Convert benchmark: load → trace → find sites → plan → convert → count FLOPs, over ≥ 30 models.

Every smp architecture with a few encoders, and timm CNN and hybrid (conv + attention) families,
all built offline without pretrained weights. Per model it times each step, records the tracing
path used, checks that the converted model keeps the output shape and that the cost model equals
fvcore's count of the converted model, and reports the success rate.

"analysis" = trace + find sites + plan + convert + cost model: everything `cubesearch convert`
does without running the model for real. fvcore's counts (base and converted) run real compute
at the input size and are timed apart.

    nice -n 10 python benchmarks/convert.py                     # 3x512x512, every model
    python benchmarks/convert.py --input-size 3x256x256 --only smp:Unet
    python benchmarks/convert.py --no-flops                     # analysis only

Writes a markdown summary to benchmarks/results/convert.md (`--out` to change).
"""

from __future__ import annotations

import argparse
import gc
import re
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import machine  # noqa: E402  benchmarks/ is on sys.path when run as a script

from cubesearch.cost.pricing import CostModel, reference_flops  # noqa: E402
from cubesearch.models.load import load_model  # noqa: E402
from cubesearch.plan.conversion import convert, cube_blocks  # noqa: E402
from cubesearch.plan.plan import make_plan  # noqa: E402
from cubesearch.plan.sites import find_sites, module_output_shapes, parse_input_size  # noqa: E402

# ViT-style encoders fix their image size at build time unless told otherwise.
DYNAMIC = {"dynamic_img_size": True}

# (spec, family, extra factory kwargs); kwargs values "{H}" are replaced by the input height.
SMP = [
    ("smp:Unet:resnet34", {}), ("smp:Unet:mobilenet_v2", {}), ("smp:Unet:efficientnet-b0", {}),
    ("smp:Unet:tu-convnext_tiny", {}),
    ("smp:UnetPlusPlus:resnet34", {}), ("smp:UnetPlusPlus:mobilenet_v2", {}),
    ("smp:MAnet:resnet34", {}), ("smp:MAnet:mit_b0", {}),
    ("smp:Linknet:resnet34", {}), ("smp:Linknet:mobilenet_v2", {}),
    ("smp:FPN:resnet34", {}), ("smp:FPN:mit_b0", {}), ("smp:FPN:tu-regnety_004", {}),
    ("smp:PSPNet:resnet34", {}), ("smp:PSPNet:mobilenet_v2", {}),
    ("smp:DeepLabV3:resnet34", {}), ("smp:DeepLabV3:tu-resnet18d", {}),
    ("smp:DeepLabV3Plus:resnet34", {}), ("smp:DeepLabV3Plus:efficientnet-b0", {}),
    ("smp:PAN:resnet34", {}), ("smp:PAN:mobilenet_v2", {}),
    ("smp:UPerNet:resnet34", {}), ("smp:UPerNet:tu-convnext_tiny", {}),
    ("smp:Segformer:mit_b0", {}), ("smp:Segformer:resnet34", {}),
    ("smp:DPT:tu-vit_tiny_patch16_224", DYNAMIC), ("smp:DPT:tu-vit_small_patch16_224", DYNAMIC),
]
TIMM_CNN = [
    ("timm:resnet18", {}), ("timm:resnet50", {}), ("timm:resnet50d", {}),
    ("timm:convnext_tiny", {}), ("timm:efficientnet_b0", {}), ("timm:mobilenetv3_large_100", {}),
    ("timm:regnety_004", {}), ("timm:densenet121", {}), ("timm:vgg11_bn", {}),
    ("timm:hrnet_w18_small", {}), ("timm:ghostnet_100", {}), ("timm:rexnet_100", {}),
    ("timm:dla34", {}), ("timm:cspdarknet53", {}), ("timm:nf_resnet26", {}),
    ("timm:repvgg_a0", {}), ("timm:dpn68", {}), ("timm:res2net50_26w_4s", {}),
]
TIMM_HYBRID = [
    ("timm:mobilevit_xs", {}), ("timm:edgenext_small", {}), ("timm:fastvit_t8", {}),
    ("timm:efficientvit_b0", {}), ("timm:coatnet_0_rw_224", {"img_size": "{H}"}),
    ("timm:maxvit_tiny_rw_224", {"img_size": "{H}"}), ("timm:levit_128", {"img_size": "{H}"}),
    ("timm:poolformer_s12", {}), ("timm:convit_tiny", {"img_size": "{H}"}),
    ("timm:vit_small_patch16_224", DYNAMIC),
]
MODELS = ([(s, "smp", k) for s, k in SMP] + [(s, "timm CNN", k) for s, k in TIMM_CNN]
          + [(s, "timm hybrid", k) for s, k in TIMM_HYBRID])


@dataclass
class Row:
    spec: str
    family: str
    ok: bool = False
    error: str = ""
    path: str = ""
    notes: list[str] = field(default_factory=list)
    sites: int = 0
    replaced: int = 0
    preset: str = ""
    t: dict[str, float] = field(default_factory=dict)
    base_gflops: float | None = None
    after_gflops: float | None = None
    cost_error: float | None = None
    params: int = 0

    @property
    def analysis(self) -> float:
        return sum(self.t.get(k, 0.0) for k in ("trace", "plan", "convert", "cost"))


def _kwargs(extra: dict[str, Any], size: tuple[int, int, int]) -> dict[str, Any]:
    return {k: (size[1] if v == "{H}" else v) for k, v in extra.items()}


def run_one(spec: str, family: str, extra: dict[str, Any], size: tuple[int, int, int],
            flops: bool) -> Row:
    row = Row(spec, family)
    t = row.t
    try:
        t0 = time.perf_counter()
        model = load_model(spec, in_channels=size[0], **_kwargs(extra, size))
        t["load"] = time.perf_counter() - t0
        row.params = sum(p.numel() for p in model.parameters())

        # find_sites times its tracing (`seconds`) and fvcore's count of the base model, which
        # also prices what each site's module does (`flops_seconds`), apart.
        report = find_sites(model, size, flops=flops, name=spec)
        t["trace"] = report.seconds
        if flops:
            t["flops"] = report.flops_seconds
        row.path, row.notes, row.sites = report.trace_path, report.trace_notes, len(report)

        # Replace every eligible site: the hardest case for conversion and the cost model.
        t0 = time.perf_counter()
        plan, _ = make_plan(report, spec, preset="fullcube",
                            model_kwargs={"num_classes": 1, "in_channels": size[0]})
        row.preset, row.replaced = "fullcube", len(plan.sites)
        t["plan"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        converted = convert(model, plan)
        assert len(cube_blocks(converted)) == len(plan.sites)
        out = module_output_shapes(converted, [""], size)[""]
        if report.output_shape is not None and out and tuple(out[0]) != tuple(report.output_shape):
            raise AssertionError(f"output shape {out[0]} != original {report.output_shape}")
        t["convert"] = time.perf_counter() - t0

        if flops:
            base = report.base_flops
            assert base is not None, report.trace_notes
            t0 = time.perf_counter()
            cost = CostModel.from_report(report)
            estimate = cost.flops(plan)
            t["cost"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            after = reference_flops(converted, size)
            t["flops"] += time.perf_counter() - t0
            row.base_gflops, row.after_gflops = base / 1e9, after / 1e9
            row.cost_error = (estimate - after) / after if after else 0.0
            if abs(row.cost_error) > 1e-3:
                raise AssertionError(f"cost model {estimate} vs fvcore {after} "
                                     f"({100 * row.cost_error:+.3f}%)")
        row.ok = True
    except Exception as exc:  # noqa: BLE001 - the benchmark records every failure
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        row.error = f"{type(exc).__name__}: {text}"[:300]
        if "--debug" in sys.argv:
            traceback.print_exc()
    finally:
        gc.collect()
    return row


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "–" if v is None else format(v, fmt)


def table(rows: list[Row], size: tuple[int, int, int]) -> Table:
    tab = Table(title=f"convert benchmark at 1×{'×'.join(map(str, size))}", title_justify="left")
    for col, just in [("model", "left"), ("family", "left"), ("ok", "center"), ("path", "left"),
                      ("sites", "right"), ("load s", "right"), ("trace s", "right"),
                      ("convert s", "right"), ("analysis s", "right"), ("fvcore s", "right"),
                      ("GFLOPs", "right"), ("→ fullcube", "right"), ("cost err", "right")]:
        tab.add_column(col, justify=just, no_wrap=col != "model")
    for r in rows:
        tab.add_row(r.spec, r.family, "✓" if r.ok else "[red]✗[/red]", r.path or "–", str(r.sites),
                    _f(r.t.get("load")), _f(r.t.get("trace")), _f(r.t.get("convert")),
                    _f(r.analysis), _f(r.t.get("flops")), _f(r.base_gflops),
                    _f(r.after_gflops), "–" if r.cost_error is None else f"{100 * r.cost_error:+.4f}%")
    return tab


def markdown(rows: list[Row], size: tuple[int, int, int], args: argparse.Namespace) -> str:
    ok = [r for r in rows if r.ok]
    paths: dict[str, int] = {}
    for r in ok:
        paths[r.path] = paths.get(r.path, 0) + 1
    analysis = [r.analysis for r in ok]
    lines = [
        "# Convert benchmark",
        "",
        f"`python benchmarks/convert.py --input-size {'x'.join(map(str, size))}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Machine: {machine()} (times are upper bounds when "
        "other jobs shared the cores).",
        "",
        f"- **Success: {len(ok)}/{len(rows)} ({100 * len(ok) / max(len(rows), 1):.0f}%)** — "
        "load, trace, find sites, plan (fullcube: every eligible site), convert, output shape "
        "kept" + ("" if args.no_flops else ", cost model = fvcore within 0.1% on the converted "
                  "model") + ".",
        f"- Trace path: {', '.join(f'{p} {n}' for p, n in sorted(paths.items())) or '–'}.",
    ]
    if analysis:
        slow = sorted(ok, key=lambda r: r.analysis, reverse=True)[:5]
        lines += [
            f"- Analysis (trace + sites + plan + convert + cost model) per model: median "
            f"{statistics.median(analysis):.2f} s, max {max(analysis):.2f} s; "
            f"{sum(a < 3 for a in analysis)}/{len(analysis)} under 3 s. Slowest: "
            + ", ".join(f"{r.spec} {r.analysis:.2f} s" for r in slow) + ".",
        ]
        fl = [r.t["flops"] for r in ok if "flops" in r.t]
        if fl:
            lines.append(f"- fvcore (base + converted, real compute): median "
                         f"{statistics.median(fl):.2f} s, max {max(fl):.2f} s.")
        errs = [abs(r.cost_error) for r in ok if r.cost_error is not None]
        if errs:
            lines.append(f"- Cost model vs fvcore, converted model: max |error| "
                         f"{100 * max(errs):.5f}%.")
    failed = [r for r in rows if not r.ok]
    if failed:
        lines += ["", "## Failures", ""] + [f"- `{r.spec}`: {r.error}" for r in failed]
    lines += ["", "## Per model", "",
              "| model | family | ok | trace path | sites | load s | trace s | convert s | "
              "analysis s | fvcore s | GFLOPs | fullcube GFLOPs | cost model error |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r.spec} | {r.family} | {'yes' if r.ok else 'NO'} | {r.path or '–'} | {r.sites} | "
            f"{_f(r.t.get('load'))} | {_f(r.t.get('trace'))} | {_f(r.t.get('convert'))} | "
            f"{_f(r.analysis)} | {_f(r.t.get('flops'))} | {_f(r.base_gflops, '.3f')} | "
            f"{_f(r.after_gflops, '.3f')} | "
            f"{'–' if r.cost_error is None else f'{100 * r.cost_error:+.5f}%'} |")
    notes = [(r.spec, n) for r in ok for n in r.notes if "failed" in n]
    if notes:
        lines += ["", "## Fallbacks", ""] + [f"- `{s}`: {n}" for s, n in notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input-size", default="3x512x512")
    ap.add_argument("--only", default="", help="regex over the model specs")
    ap.add_argument("--no-flops", action="store_true", help="skip fvcore (analysis only)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "convert.md"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-warmup", action="store_true",
                    help="time the first model with the one-time import costs")
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    size = parse_input_size(args.input_size)
    models = [m for m in MODELS if re.search(args.only, m[0])]
    if not args.no_warmup:  # one-time costs (torch.export / dynamo imports, fvcore's jit) apart
        t0 = time.perf_counter()
        run_one(str(ROOT / "examples" / "unet.py"), "warm-up", {"width": 4}, (size[0], 64, 64),
                flops=not args.no_flops)
        print(f"warm-up (examples/unet.py at 64×64, untimed): {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
    rows = []
    for spec, family, extra in models:
        row = run_one(spec, family, extra, size, flops=not args.no_flops)
        rows.append(row)
        status = (f"{row.path:6s} {row.sites:3d} sites, analysis {row.analysis:.2f} s, "
                  f"fvcore {row.t.get('flops', 0):.1f} s" if row.ok else f"FAILED {row.error}")
        print(f"{spec:40s} {status}", file=sys.stderr, flush=True)
    Console(width=200).print(table(rows, size))
    ok = sum(r.ok for r in rows)
    print(f"success {ok}/{len(rows)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows, size, args))
    print(f"wrote {out}")
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
