"""The one progress bar the project draws (trainer, map cells, search phases): a label, the
bar, done/total, elapsed and ETA, then an optional status text; drawn only on a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def eta_bar(label: str, console: Console, *, enabled: bool, status: str | None = None) -> Progress:
    """`label` and `status` are rich column formats (e.g. "{task.description}"); `enabled` false
    or a console that is not a terminal gives a bar that draws nothing."""
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn()]
    if status is not None:
        columns.append(TextColumn(status))
    return Progress(*columns, console=console, disable=not (enabled and console.is_terminal))
