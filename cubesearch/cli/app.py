"""The Typer app and the helpers every command shares (console, JSON output)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer
from rich.console import Console

from cubesearch.core.threads import THREADS_ENV, apply_threads
from cubesearch.core.version import __version__

app = typer.Typer(
    name="cubesearch",
    help="Put Cube Kernel blocks into any timm / smp / model.py model and search IoU vs FLOPs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Where output is not a terminal (a file, a pipe) and COLUMNS is unset, rich would cut tables to
# 80 columns: the front table's notes and "sites" lost. There, lines are this wide instead.
PIPED_WIDTH = 200


def _console(stderr: bool = False) -> Console:
    """A rich console at the terminal's width, or PIPED_WIDTH (COLUMNS if set) elsewhere."""
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, width=PIPED_WIDTH if wide else None)


# Human output (tables, progress) goes to stderr when --json owns stdout.
console = _console()
err_console = _console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cubesearch {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    threads: str = typer.Option("auto", "--threads", metavar="N|auto",
                                help=f"CPU threads for training and measuring. auto: ${THREADS_ENV} or "
                                "$OMP_NUM_THREADS if set, else one less than the cores (on a shared "
                                "2-core machine a second thread made training 3.5× slower)."),
) -> None:
    """cubesearch: find where Cube Kernel blocks go, and which trade-off is worth it."""
    apply_threads(threads)


def out_console(as_json: bool) -> Console:
    """Where human-readable output goes: stdout normally, stderr when stdout carries JSON."""
    return err_console if as_json else console


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()
