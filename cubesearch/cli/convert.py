"""`cubesearch sites MODEL` and `cubesearch convert MODEL -o OUT/`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from cubesearch.cli import options as o
from cubesearch.cli.app import app, out_console, print_json
from cubesearch.cli.options import MODEL_ARG, TRUST_MODEL_CODE, model_args
from cubesearch.core.errors import CubesearchError


def _config(lattice_stride: int | None, groups: int | None, router: str | None,
            attention: bool | None, depth: int | None, fusion_kernel: int | None,
            act: str | None):
    from cubesearch.blocks import CubeConfig

    knobs = {k: v for k, v in dict(lattice_stride=lattice_stride, groups=groups, router=router,
                                   attention=attention, depth=depth, fusion_kernel=fusion_kernel,
                                   act=act).items() if v is not None}
    try:
        return CubeConfig(**knobs)
    except ValueError as exc:
        raise CubesearchError(f"bad block knob: {exc}") from None


def _load(model: str, size: tuple[int, int, int], classes: int, pretrained: bool,
          model_args: dict[str, Any]):
    from cubesearch.models.load import load_model

    return load_model(model, num_classes=classes, in_channels=size[0], pretrained=pretrained,
                      **model_args)


def _g(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value / 1e9:.{digits}f}"


def _count(n: int) -> str:
    """2,359,296 → 2.36M; 15,051 → 15.1K."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _size_text(size: tuple[int, ...]) -> str:
    return "×".join(str(s) for s in size)


def _table(title: str, columns: list[tuple[str, str]]) -> Table:
    """Compact table: names fold onto several lines rather than being cut, numbers never wrap."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col, just in columns:
        if just == "fold":
            table.add_column(col, justify="left", overflow="fold", ratio=1, min_width=12)
        else:
            table.add_column(col, justify=just, no_wrap=True)
    return table


# --- sites -------------------------------------------------------------------------------------


@app.command()
def sites(
    model: str = typer.Argument(..., help=o.MODEL_HELP),
    input_size: str = typer.Option("3x512x512", "--input-size", help="Reference input CxHxW."),
    classes: int = typer.Option(1, "--classes", "--num-classes", help="Output classes."),
    pretrained: bool = typer.Option(False, help="Load pretrained weights (needs a download)."),
    model_arg: list[str] = MODEL_ARG,
    depthwise: bool = typer.Option(False, "--depthwise", help="Depthwise 3×3 convs are eligible too."),
    strided: bool = typer.Option(False, "--strided", help="Strided 3×3 convs are eligible too."),
    preset: str = typer.Option("decoder", help="Mark the sites this preset picks: fullcube, "
                               "decoder, encoder, none."),
    include: list[str] = typer.Option(None, "--include", help="Regex: pick sites by name instead "
                                      "of by role (repeatable)."),
    exclude: list[str] = typer.Option(None, "--exclude", help="Regex: never pick these (repeatable)."),
    trace: str = typer.Option("auto", help="Tracing path: auto, export, fx or hooks."),
    flops: bool = typer.Option(True, "--flops/--no-flops", help="Count the model's FLOPs with "
                               "fvcore (real compute at the input size; shares need it)."),
    show_all: bool = typer.Option(False, "--all", help="Also list the convs that are not eligible."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """List the 3×3 convs where a Cube block can go, with shapes, MACs and share of the model."""
    from cubesearch.plan.plan import select_sites
    from cubesearch.plan.sites import find_sites, parse_input_size

    size = parse_input_size(input_size)
    t0 = time.perf_counter()
    net = _load(model, size, classes, pretrained, model_args(model_arg))
    load_s = time.perf_counter() - t0
    report = find_sites(net, size, depthwise=depthwise, strided=strided, trace=trace, name=model,
                        flops=flops)
    chosen = {s.name for s in select_sites(report.sites, preset, include=include or (),
                                           exclude=exclude or ())}
    if as_json:
        data = report.to_dict()
        data.update(preset=preset, selected=[s.name for s in report.sites if s.name in chosen],
                    load_seconds=round(load_s, 4))
        print_json(data)
        _print_sites(report, chosen, preset, show_all, out_console(True))
        return
    _print_sites(report, chosen, preset, show_all, out_console(False))


def _print_sites(report: Any, chosen: set[str], preset: str, show_all: bool, console: Any) -> None:
    from cubesearch.cost.report import pay_notes, skipped_summary

    base = report.base_flops
    strided = any(s.stride != 1 for s in report.sites)
    twice = any(s.calls > 1 for s in report.sites)
    columns = [("#", "right"), ("site", "fold"), ("role", "left"), ("C_in→out", "right")]
    columns += [("stride", "right")] if strided else []
    columns += [("input", "right")] + ([("calls", "right")] if twice else [])
    columns += [("GMACs", "right"), ("share", "right"), ("pick", "center")]
    table = _table(f"{report.model}: eligible 3×3 convs at 1×{_size_text(report.input_size)} "
                   f"(pick = preset {preset!r})", columns)
    for i, s in enumerate(report.sites, 1):
        share = f"{100 * s.macs / base:.2f}%" if base else "–"
        role = f"{s.role} (logits)" if s.prediction else s.role
        row = [str(i), s.name, role, f"{s.in_channels}→{s.out_channels}"]
        row += [str(s.stride)] if strided else []
        row += [s.resolution] + ([str(s.calls)] if twice else [])
        row += [f"{s.macs / 1e9:.3f}", share, "✓" if s.name in chosen else ""]
        table.add_row(*row)
    if report.sites:
        console.print(table)
    if show_all and report.skipped:
        skipped = _table("convs that are not eligible", [("conv", "fold"), ("why not", "left")])
        for name, why in report.skipped.items():
            skipped.add_row(name, why)
        console.print(skipped)
    n_enc, n_dec = len(report.by_role("encoder")), len(report.by_role("decoder"))
    if not report.sites:
        console.print(f"[bold]No eligible 3×3 conv[/bold] in {report.model} at "
                      f"{_size_text(report.input_size)}"
                      + (f" ({len(report.skipped)} convs not eligible: "
                         f"{skipped_summary(report.skipped)})" if report.skipped else "")
                      + ". A block can still be inserted with `cubesearch convert --insert "
                        "after:MODULE`.")
    else:
        eligible = report.eligible_macs
        share = f" = {100 * eligible / base:.1f}% of the model" if base else ""
        console.print(f"{len(report.sites)} eligible sites ({n_enc} encoder, {n_dec} decoder), "
                      f"{eligible / 1e9:.3f} GMACs{share}; the {preset!r} preset picks "
                      f"{len(chosen)}.")
        twice_sites = [s for s in report.sites if s.calls > 1]
        if twice_sites:
            console.print(f"{len(twice_sites)} site(s) called more than once (one block serves every "
                          f"call): {', '.join(s.name for s in twice_sites[:5])}")
        logits = [s.name for s in report.sites if s.prediction]
        if logits:
            console.print(f"{logits[0]} computes the logits: search spaces leave it alone unless "
                          "they set `prediction_conv: true`.")
        for line in pay_notes(report.sites):
            console.print(line)
        if report.skipped and not show_all:
            console.print(f"Not eligible: {skipped_summary(report.skipped)} (--all lists them).")
    flops = (f"{_g(base)} GFLOPs (fvcore, eval, batch 1, counted in {report.flops_seconds:.2f} s)"
             if base is not None else "GFLOPs not counted")
    console.print(f"Model: {flops}, {report.base_params:,} params. "
                  f"Traced with [bold]{report.trace_path}[/bold] in {report.seconds:.2f} s.")
    for note in report.trace_notes:
        console.print(f"  [dim]{note}[/dim]")


# --- convert -----------------------------------------------------------------------------------


@app.command()
def convert(
    model: str = typer.Argument(None, help=o.MODEL_HELP + " Optional with --plan (its model)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write OUT/plan.json and OUT/model.safetensors."),
    preset: str = typer.Option("decoder", help="Sites to replace: fullcube, decoder, encoder, none."),
    plan_file: Path = typer.Option(None, "--plan", help="Take this plan.json instead of a preset."),
    include: list[str] = typer.Option(None, "--include", help="Regex: replace the eligible sites "
                                      "whose name matches, whatever their role (repeatable)."),
    exclude: list[str] = typer.Option(None, "--exclude", help="Regex: keep these convs (repeatable)."),
    insert: list[str] = typer.Option(None, "--insert", help="after:MODULE — insert x + block(x) "
                                     "after this module (repeatable)."),
    lattice_stride: int = typer.Option(None, help="Block knob: 1 or 2 (default 2)."),
    groups: int = typer.Option(None, help="Block knob: fusion conv groups (default 4)."),
    router: str = typer.Option(None, help="Block knob: pre, post or none (default pre)."),
    attention: bool = typer.Option(None, "--attention/--no-attention", help="Block knob (default on)."),
    depth: int = typer.Option(None, help="Block knob: stacked blocks (default 1)."),
    fusion_kernel: int = typer.Option(None, help="Block knob: 1 or 3 (default 3)."),
    act: str = typer.Option(None, help="Block knob: gelu or relu (default gelu)."),
    depthwise: bool = typer.Option(False, "--depthwise", help="Depthwise 3×3 convs are eligible too."),
    strided: bool = typer.Option(False, "--strided", help="Strided 3×3 convs are eligible too."),
    input_size: str = typer.Option(None, "--input-size", help="Reference input CxHxW "
                                   "(default 3x512x512, or the plan's)."),
    classes: int = typer.Option(None, "--classes", "--num-classes", help="Output classes (default 1)."),
    pretrained: bool = typer.Option(False, help="Load pretrained weights (needs a download)."),
    model_arg: list[str] = MODEL_ARG,
    trace: str = typer.Option("auto", help="Tracing path: auto, export, fx or hooks."),
    trust_model_code: bool = TRUST_MODEL_CODE,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Replace eligible 3×3 convs by Cube blocks (or insert blocks), report before/after."""
    from cubesearch.cost.report import convert_spec  # torch loads here, not at --help

    report = convert_spec(
        model, plan=plan_file, preset=preset,
        config=_config(lattice_stride, groups, router, attention, depth, fusion_kernel, act),
        include=include or (), exclude=exclude or (), insert=insert or (), depthwise=depthwise,
        strided=strided, input_size=input_size, num_classes=classes, pretrained=pretrained,
        model_kwargs=model_args(model_arg), trace=trace, out=out, trust_model_code=trust_model_code)
    result = report.to_dict()
    if as_json:
        print_json(result)
    _print_convert(result, out_console(as_json))


def _print_convert(result: dict[str, Any], console: Any) -> None:
    before, after = result["before"], result["after"]
    summary = _table(f"{result['model']} at 1×{_size_text(tuple(result['input_size']))}",
                     [("", "left"), ("before", "right"), ("after", "right"), ("change", "right")])
    bp, ap = before["params"], after["params"]
    summary.add_row("params", f"{bp:,}", f"{ap:,}", f"{100 * (ap - bp) / bp:+.1f}%" if bp else "–")
    bg, ag = before["gflops"], after["gflops"]
    summary.add_row("GFLOPs (fvcore)", f"{bg:.3f}" if bg is not None else "–", f"{ag:.3f}",
                    f"{100 * (ag - bg) / bg:+.1f}%" if bg else "–")
    if after["gflops_cost_model"] is not None:  # None: a plan with widths (fvcore only)
        summary.add_row("GFLOPs (cost model)", "", f"{after['gflops_cost_model']:.3f}",
                        f"{100 * result['cost_model_error']:+.3f}% vs fvcore")
    summary.add_row("sites replaced", "", f"{result['sites_replaced']} of {result['sites_eligible']}",
                    "")
    if result["insertions"]:
        summary.add_row("blocks inserted", "", str(result["insertions"]), "")
    console.print(summary)
    if result["sites"]:
        shorts = {r["config_short"] for r in result["sites"]}
        shared = len(shorts) == 1
        title = "per site, conv → block" + (f" (every block: {next(iter(shorts))})" if shared else "")
        columns = [("site", "fold"), ("C_in→out", "right"), ("input", "right"), ("GFLOPs", "right"),
                   ("params", "right")] + ([] if shared else [("block", "fold")])
        table = _table(title, columns)
        for r in result["sites"]:
            row = [r["site"], f"{r['in']}→{r['out']}", "×".join(map(str, r["input_hw"])),
                   f"{r['conv_gmacs']:.3f}→{r['block_gflops']:.3f}",
                   f"{_count(r['conv_params'])}→{_count(r['block_params'])}"]
            table.add_row(*row, *([] if shared else [r["config_short"]]))
        console.print(table)
    for note in result["notes"]:
        console.print(f"note: {note}")
    where = f" Wrote {result['out']}/plan.json and model.safetensors." if result["out"] else ""
    console.print(f"Traced with [bold]{result['trace_path']}[/bold]; "
                  f"{result['seconds']['total']:.2f} s in all.{where}")
