"""Pages generated when the site is built (mkdocs-gen-files runs this), so they cannot drift:

- `reference/cli.md`: every command of the Typer app, its usage, help and options.
- `benchmarks/*.md`: one page per result in `benchmarks/results/` (its `.md` as the benchmark
  wrote it, and the tables of its `.json`); a table of them all, with a headline per benchmark
  computed from its JSON, appended to `benchmarks/index.md`; the section's SUMMARY.md (navigation).
- `block.md`: the block's cost table, computed by `cubesearch.models.flops.cost_table_rows`.

A new benchmark page is one line in BENCHMARKS below (a result not listed still gets a page).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mkdocs_gen_files
import typer.main

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Bench:
    stem: str  # benchmarks/results/<stem>.md and/or .json
    title: str
    # The index's headline: str.format over the JSON object (`{a[b]:.2f}`), or "" (md only).
    headline: str = ""


BENCHMARKS = [
    Bench("demo", "`make demo` on a fresh clone",
          "{n_runs} run(s): median {median_wall_min:.1f} min wall, {median_cpu_min:.1f} CPU-min, "
          "install included (load up to {max_load:.1f})"),
    Bench("block", "Block speed vs the conv"),
    Bench("convert", "Conversion over 55 timm + smp models"),
    Bench("search-cost", "Cost model vs fvcore"),
    Bench("data", "Synthetic data"),
    Bench("train", "Training speed and memory"),
    Bench("train-learning", "Training: the learning check"),
    Bench("trial-lr", "Trial fine-tuning learning rates"),
    Bench("search-samplers", "Samplers' hypervolume"),
    Bench("search_ray", "Ray backend overhead"),
    Bench("oneshot", "One-shot supernet ranking (retired)",
          "Kendall τ {kendall_tau:.2f} vs fine-tuned IoU (seed to seed {seed_kendall_tau:.2f}); "
          "{plans_per_hour_ratio:.0f}× the plans per hour ({score_seconds_mean:.2f} s a score)"),
    Bench("oneshot-compare", "One-shot vs trials search (retired)",
          "hypervolume one-shot / trials {hv_oneshot:.2f} / {hv_trials:.2f} = {hv_ratio:.2f} "
          "(target {target_ratio}), {proxy_trials} scored + {confirm} confirmed, {wall_minutes:.1f} min"),
    Bench("oneshot-compare-p50", "One-shot vs trials, 50 scored plans (retired)",
          "hypervolume ratio {hv_ratio:.2f} (target {target_ratio}), {proxy_trials} scored + "
          "{confirm} confirmed"),
    Bench("deploy", "Deployment: eager, torch.compile, ONNX Runtime",
          "FullCube r18 at 512² / unconverted under ONNX Runtime: {fullcube_ort_latency_ratio:.2f}× "
          "({threads} threads), {fullcube_ort_latency_ratio_1_thread:.2f}× (1 thread), on a loaded "
          "machine; the per-site map's ORT plan: {map_plan_ort_latency_ratio:.2f}× at "
          "{map_plan_ort_flops_ratio:.2f}× the FLOPs; the latency search's best plan with ≥ 30 % "
          "fewer FLOPs and a usable IoU: {best_plan_text}; latency model within ±10 %: "
          "{latency_within_10pct_share:.0%} (worst backend)"),
    Bench("fidelity", "Cheap signals vs training by the final recipe",
          "{n_plans} plans × {seeds} seeds, {epochs:g} epochs (not converged): across seeds rung 3 τ "
          "{cross_seed[rung3]:.2f}, the 2-epoch trial {cross_seed[trial2]:.2f}; FullCube "
          "{fullcube_iou_ratio:.2f}× its paired baseline's IoU"),
    Bench("fidelity-unet", "Cheap signals vs training by the final recipe: examples/unet.py",
          "{n_plans} plans × {seeds} seeds, {epochs:g} epochs: across seeds rung 1 τ "
          "{cross_seed[rung1]:.2f}, rung 3 {cross_seed[rung3]:.2f} (seed-to-seed "
          "{seed_to_seed_tau:.2f}); FullCube "
          "{fullcube_iou_ratio:.2f}× its paired baseline's IoU"),
    Bench("paper", "The paper's Tabs. 2–4 in miniature", "{headline}"),
    Bench("map", "Where a Cube block pays: the site map (demo model)",
          "additive prediction vs trained IoU: τ {additive_kendall_tau:.2f} over {additive_plans} plans "
          "(target 0.65); HV Cube-only / pruning {cube_hv_ratio_vs_pruning:.2f}; no joint front (the "
          "sweep gave up on coupled widths); {cells} cells"),
    Bench("map-unet-dice", "The same plans trained with BCE + Dice (examples/unet.py)",
          "additive τ {additive_kendall_tau:.2f}; HV joint / pruning {joint_hv_ratio_vs_pruning:.2f}, "
          "Cube-only / pruning {cube_hv_ratio_vs_pruning:.2f} (with BCE pruning collapses to IoU 0)"),
    Bench("map-unet", "Where a Cube block pays: the site map (examples/unet.py)",
          "additive prediction vs trained IoU: τ {additive_kendall_tau:.2f} over {additive_plans} plans "
          "(target 0.65); HV joint / pruning {joint_hv_ratio_vs_pruning:.2f}, Cube-only / pruning "
          "{cube_hv_ratio_vs_pruning:.2f}; {cube_sites_on_joint_front} Cube site(s) on the joint front; "
          "{cells} cells"),
    Bench("kd-ablation", "Distillation in the final recipe, on and off",
          "KD from the search's baseline minus none: unconverted {plans[unconverted][delta]:+.3f} IoU, "
          "FullCube {plans[FullCube][delta]:+.3f}; FullCube / paired {fullcube_ratio_kd:.3f}× with, "
          "{fullcube_ratio_no_kd:.3f}× without"),
    Bench("latency", "Latency model vs measured models",
          "{models[0][model]}, {models[0][backend]}: {models[0][within_10pct_share]:.0%} of plans "
          "within ±10 % corrected (raw sum {models[0][raw_within_10pct_share]:.0%}); "
          "{models[1][backend]}: {models[1][within_10pct_share]:.0%} (raw "
          "{models[1][raw_within_10pct_share]:.0%}); the latency search's best plan with ≥ 30 % "
          "fewer FLOPs and a usable IoU: {demo_search[best_plan_text]}"),
]


# --- CLI reference ------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def cli_reference() -> str:
    from cubesearch.cli import app

    root = typer.main.get_command(app)
    ctx = root.make_context("cubesearch", [], resilient_parsing=True)
    lines = ["# CLI reference", "",
             "Generated from the Typer app (`cubesearch.cli.app`) when the site is built; "
             "`cubesearch COMMAND --help` prints the same.", ""]
    lines += _command(root, ctx, "cubesearch", level=2)
    return "\n".join(lines)


def _command(cmd: Any, ctx: Any, path: str, level: int) -> list[str]:
    out = [f"{'#' * level} `{path}`", ""] if level > 2 else []
    if cmd.help:
        out += [cmd.help.strip(), ""]
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    out += ["```", f"{path} {usage}", "```", ""]
    rows = [p.get_help_record(ctx) for p in cmd.params]
    rows = [r for r in rows if r]
    if rows:
        out += ["| option | what |", "|---|---|"]
        out += [f"| `{_cell(name)}` | {_cell(text)} |" for name, text in rows]
        out.append("")
    for name in getattr(cmd, "list_commands", lambda _: [])(ctx):
        sub = cmd.get_command(ctx, name)
        sub_ctx = type(ctx)(sub, info_name=name, parent=ctx)
        out += _command(sub, sub_ctx, f"{path} {name}", level + 1)
    return out


# --- benchmarks ---------------------------------------------------------------------------------


def _demote(md: str) -> str:
    """The benchmark's own page under our title: its headings one level down (not in code)."""
    lines, fenced = [], False
    for line in md.splitlines():
        fenced ^= line.lstrip().startswith("```")
        lines.append(re.sub(r"^(#{1,5}) ", r"#\1 ", line) if not fenced else line)
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return _cell(json.dumps(v, ensure_ascii=False)[:120])
    return _cell(v)


def _scalars(obj: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in obj.items():
        if isinstance(v, dict) and all(not isinstance(x, (dict, list)) for x in v.values()):
            out += [(f"{prefix}{k}.{kk}", vv) for kk, vv in v.items()]
        elif not isinstance(v, (dict, list)):
            out.append((f"{prefix}{k}", v))
    return out


def json_tables(data: Any) -> list[str]:
    """Every figure of a result JSON: its scalars as one table, each list of records as another."""
    out: list[str] = []
    if not isinstance(data, dict):
        return ["```json", json.dumps(data, indent=1)[:4000], "```", ""]
    scalars = _scalars(data)
    if scalars:
        out += ["| figure | value |", "|---|---:|"] + [f"| `{k}` | {_fmt(v)} |" for k, v in scalars] + [""]
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            records = [dict(_scalars(r)) for r in value]
            cols = list(dict.fromkeys(c for r in records for c in r))
            out += [f"**`{key}`**", "", "| " + " | ".join(f"`{c}`" for c in cols) + " |",
                    "|" + "---|" * len(cols)]
            out += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in records]
            out.append("")
            for i, rec in enumerate(value):  # nested records of each (e.g. a model's fronts)
                for k, v in rec.items():
                    if isinstance(v, dict) and any(isinstance(x, (dict, list)) for x in v.values()):
                        out += [f"**`{key}[{i}].{k}`**", ""] + json_tables(v)
        elif isinstance(value, dict) and any(isinstance(x, (dict, list)) for x in value.values()):
            out += [f"**`{key}`**", ""] + json_tables(value)
    return out


def benchmark_pages() -> None:
    listed = {b.stem: b for b in BENCHMARKS}
    stems = sorted({p.stem for p in RESULTS.glob("*.md")} | {p.stem for p in RESULTS.glob("*.json")})
    benches = [b for b in BENCHMARKS if b.stem in stems] + [
        Bench(s, s.replace("_", " ").replace("-", " ").capitalize()) for s in stems if s not in listed]
    index = ["", "## Every result", "",
             "Generated when the site is built from `benchmarks/results/`: each page is the "
             "benchmark's Markdown as it wrote it and its JSON as tables; the headlines are "
             "computed from the JSON.", "",
             "| benchmark | headline (computed from its JSON) | files |", "|---|---|---|"]
    summary = ["* [Overview](index.md)"]
    for b in benches:
        md_path, json_path = RESULTS / f"{b.stem}.md", RESULTS / f"{b.stem}.json"
        data = json.loads(json_path.read_text()) if json_path.exists() else None
        page = [f"# {b.title}", ""]
        if md_path.exists():
            page += [_demote(md_path.read_text()), ""]
        if data is not None:
            page += ["## Data", "", f"Every figure of `benchmarks/results/{b.stem}.json`.", "",
                     '??? note "The JSON as tables"', ""]
            page += ["    " + line if line else "" for line in json_tables(data)]
        with mkdocs_gen_files.open(f"benchmarks/{b.stem}.md", "w") as f:
            f.write("\n".join(page) + "\n")
        try:
            headline = b.headline.format(**data) if b.headline and data is not None else ""
        except (KeyError, IndexError, TypeError, ValueError) as exc:  # the JSON changed shape
            raise SystemExit(f"docs/gen_pages.py: the headline of {b.stem!r} does not fit "
                             f"benchmarks/results/{b.stem}.json ({type(exc).__name__}: {exc})") from None
        files = ", ".join(f"`{p.name}`" for p in (md_path, json_path) if p.exists())
        index.append(f"| [{b.title}]({b.stem}.md) | {_cell(headline)} | {files} |")
        summary.append(f"* [{b.title}]({b.stem}.md)")
    with mkdocs_gen_files.open("benchmarks/index.md", "a") as f:  # after the page's own text
        f.write("\n".join(index) + "\n")
    with mkdocs_gen_files.open("benchmarks/SUMMARY.md", "w") as f:
        f.write("\n".join(summary) + "\n")
    for png in RESULTS.glob("*.png"):  # plots a benchmark's Markdown shows
        with mkdocs_gen_files.open(f"benchmarks/{png.name}", "wb") as f:
            f.write(png.read_bytes())


# --- the block's cost table ---------------------------------------------------------------------


def block_cost_table() -> str:
    from cubesearch.blocks import CubeConfig, block_cost
    from cubesearch.blocks.cost import conv_cost
    from cubesearch.models.flops import cost_table_rows

    c, size = 96, 128
    rows = cost_table_rows(c, size)
    conv, cube = rows
    out = ["", "## Cost, computed", "",
           f"Computed when this page was built (`cubesearch.models.flops.cost_table_rows`, the table "
           f"`cubesearch demo --cost-only` prints): C_in = C_out = {c}, input 1×{c}×{size}×{size}, "
           "parameters counted on the modules, conv MACs from the formulas of "
           "[design §1](design.md#1-the-cube-kernel-block), GFLOPs by fvcore (train mode, BatchNorm "
           "and attention included).", "",
           "| module | params | conv GMACs (formula) | GFLOPs (fvcore) |", "|---|---:|---:|---:|"]
    out += [f"| {r['module']} | {r['params']:,} | {r['conv_gmacs_formula']:.3f} | {r['gflops_fvcore']:.3f} |"
            for r in rows]
    out += ["", f"The block: {conv['params'] / cube['params']:.2f}× fewer parameters, "
            f"{conv['conv_gmacs_formula'] / cube['conv_gmacs_formula']:.2f}× fewer conv MACs.", "",
            "Each knob changed alone from the default, same shapes (`cubesearch.blocks.block_cost`):", "",
            "| config | params | conv GMACs | conv MACs vs the 3×3 conv |", "|---|---:|---:|---:|"]
    base = conv_cost(c, c, 3, 1, size)
    default = CubeConfig()
    variants = [(f"default ({default.short()})", default)]
    for knob, value in (("lattice_stride", 1), ("groups", 1), ("groups", 2), ("router", "post"),
                        ("router", "none"), ("attention", False), ("depth", 2), ("fusion_kernel", 1)):
        variants.append((f"{knob} = {value}", default.model_copy(update={knob: value})))
    for label, cfg in variants:
        bc = block_cost(c, c, cfg, 1, size)
        out.append(f"| {label} | {bc.params:,} | {bc.conv_macs_spec / 1e9:.3f} | "
                   f"{bc.conv_macs_spec / base.conv_macs_spec:.3f}× |")
    return "\n".join(out) + "\n"


def generate() -> None:
    with mkdocs_gen_files.open("reference/cli.md", "w") as f:
        f.write(cli_reference())
    benchmark_pages()
    with mkdocs_gen_files.open("block.md", "a") as f:
        f.write(block_cost_table())


# mkdocs-gen-files runs this file with runpy.run_path (its __name__ "<run_path>"): only then do the
# pages go into the site being built. Imported (a check of BENCHMARKS' headlines, say), outside a
# build mkdocs_gen_files.open would write into docs/ itself.
if __name__ == "<run_path>":
    generate()
