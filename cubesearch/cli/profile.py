"""`cubesearch profile MODEL`: measure the latency table of a model's plans on this device."""

from __future__ import annotations

import typer

from cubesearch.cli import options as o
from cubesearch.cli.app import app, out_console, print_json


@app.command()
def profile(
    model: str = o.MODEL_SPEC,
    device: str = typer.Option("cpu", help="cpu or cuda (cuda:N)."),
    backend: str = typer.Option("torch", help="Runtime the ops are timed in: torch (eager, blocks "
                                "folded) or ort (ONNX Runtime CPU on the folded ONNX graph "
                                "`export` writes)."),
    batch: int = typer.Option(1, help="Batch size to measure at."),
    threads: int = typer.Option(None, help="CPU threads (default: torch's count here)."),
    dtype: str = typer.Option("float32", help="float32, bfloat16, or float16 (cuda)."),
    input_size: str = typer.Option("3x512x512", help="Input CxHxW."),
    space: str = typer.Option("default", help="Search space whose block configs to measure."),
    out: str = typer.Option("runs/search/latency.json", "--out", "-o",
                            help="The latency table (JSON); reused when measured on this device."),
    classes: int = typer.Option(1, help="Output classes."),
    pretrained: bool = typer.Option(False, help="Load pretrained weights (needs a download)."),
    reprofile: bool = typer.Option(False, "--reprofile", help="Measure again even if the table "
                                   "matches this device."),
    calibrate: int = typer.Option(4, min=0, help="Random plans measured as whole models to fit "
                                  "the additivity correction (0: none)."),
    repeats: int = typer.Option(5, min=1, help="Timed runs per measurement (the median is kept)."),
    warmup: int = typer.Option(1, min=0, help="Untimed runs first."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object at the end."),
) -> None:
    """Measure the model, each searchable conv and every block config the space allows there,
    on this device, into a latency table for `search --objectives iou,latency`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cubesearch.cost.latency import LatencyModel
    from cubesearch.cost.latency.profile import profile_model

    console = out_console(as_json)
    bar = Progress(TextColumn("profile"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}"), console=console, transient=True,
                   disable=not console.is_terminal)
    task = bar.add_task("", total=None)
    with bar:
        table, stats, status = profile_model(
            model, device=device, batch=batch, threads=threads, dtype=dtype,
            input_size=input_size, space=space, out=out, num_classes=classes,
            pretrained=pretrained, reprofile=reprofile, backend=backend, calibrate=calibrate, repeats=repeats,
            warmup=warmup, progress=lambda n, what: bar.update(task, advance=n, description=what),
            total=lambda n: bar.update(task, total=n), log=console.print)
    lat = LatencyModel(table, stats.key)
    corr = lat.correction
    result = {"table": out, "status": status, "fingerprint": table.fingerprint.to_dict(),
              **stats.to_dict(), "base_ms": stats.base_us / 1e3,
              "correction": corr.to_dict() if corr else None}
    if as_json:
        print_json(result)
        return
    console.print(f"{model}: unconverted {stats.base_us / 1e3:.2f} ms ({stats.layout}) on "
                  f"{table.fingerprint.label()}")
    console.print(f"{stats.sites} searchable sites × {stats.configs} block configs: "
                  f"{stats.ops_needed} ops ({stats.ops_measured} measured, {stats.ops_reused} "
                  f"reused) in {stats.seconds:.1f} s")
    if corr is not None:
        console.print(f"additivity correction from {corr.n} whole-model measurements: removed × "
                      f"{corr.a:.2f}, added × {corr.b:.2f}, {corr.c / 1e3:+.2f} ms per site "
                      f"(fit residual {corr.rms_pct or 0:.1f} %)")
    console.print(f"latency table: {out}")
