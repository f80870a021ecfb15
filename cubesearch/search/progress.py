"""What a running search shows, whichever backend schedules its trials."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from cubesearch.core.progressbar import eta_bar
from cubesearch.search.context import SearchContext
from cubesearch.search.pareto import sites_text
from cubesearch.search.record import TrialCounts
from cubesearch.search.result import SearchResult, collect_result


def front_table(result: SearchResult, title: str = "Pareto front") -> Table:
    table = Table(title=title)
    base = result.baseline
    rows = list(result.front)
    if base is not None and base not in rows:
        rows = [*rows, base]
    # measured latency (ms, on the profiled device) next to GFLOPs when the study records it
    latency = any("latency" in p.extra for p in rows)
    # halving: the IoU a plan was ranked on (its first rung) beside its trained IoU
    ranked = any("iou_rung0" in p.extra for p in rows)
    columns = ("trial", *(("rung-0 IoU",) if ranked else ()), "IoU",
               "ΔIoU", "GFLOPs", "saving",
               *(("ms",) if latency else ()), "params", "sites", "note")
    for col in columns:
        # numbers never wrap; a long note does when the console is narrow
        table.add_column(col, justify="left" if col == "note" else "right", no_wrap=col != "note")
    for p in rows:
        d_iou = f"{p.iou - base.iou:+.4f}" if base else ""
        saving = f"{1 - p.gflops / base.gflops:.1%}" if base and base.gflops else ""
        note = p.label + ("" if p.feasible else " (over budget)")
        ms = (f"{p.extra['latency']:.2f}" if "latency" in p.extra else "–",) if latency else ()
        rung0 = (f"{p.extra['iou_rung0']:.4f}" if "iou_rung0" in p.extra else "–",) if ranked else ()
        table.add_row(str(p.trial), *rung0, f"{p.iou:.4f}", d_iou, f"{p.gflops:.3f}", saving, *ms,
                      f"{p.params:,}", sites_text(p.sites_replaced, p.sites_narrowed), note.strip())
    return table


def describe_trial(trial: FrozenTrial) -> str:
    """`#12: IoU 0.4512, 7.665 GFLOPs`, `#13: over budget` or `#14: failed`."""
    a = trial.user_attrs
    if trial.state != TrialState.COMPLETE:
        return f"#{trial.number}: failed"
    if a.get("infeasible"):
        return f"#{trial.number}: over budget"
    what = "score" if a.get("scored") else "IoU"
    return (f"#{trial.number}: {what} {a.get('iou', float('nan')):.4f}, "
            f"{a.get('gflops', float('nan')):.3f} GFLOPs"
            + (f", {a['latency']:.2f} ms" if "latency" in a else ""))


class SearchProgress:
    """On a terminal a bar (count and ETA) with the current Pareto front under it (the front is
    dropped when the search ends: the caller prints the final one); elsewhere (a log file, CI)
    one line per finished trial, or per `every` scored plans. `console` is where the search's log
    lines go too. The bar counts the context's phase: trained trials, or plans scored."""

    def __init__(self, ctx: SearchContext, console: Console, *, done: int, enabled: bool,
                 label: str = "search", every: int = 1) -> None:
        self.ctx, self.console, self.label, self.enabled = ctx, console, label, enabled
        self.phase = ctx.phase
        assert self.phase is not None
        self.total, self.every = self.phase.wanted, every
        live_view = enabled and console.is_terminal
        self.bar = eta_bar(label, console, enabled=enabled, status="{task.description}")
        self.task = self.bar.add_task("", total=self.total, completed=done)
        self.live = (Live(Group(self.bar), console=console, refresh_per_second=4, transient=False)
                     if live_view else None)

    def log(self, text: str) -> None:
        self.console.print(text)

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        counts = TrialCounts.of(study)
        n = counts.done(self.phase)
        what = describe_trial(trial)
        if counts.rejected:
            what += f" ({counts.rejected} over budget so far)"
        self.bar.update(self.task, completed=n, description=f"last {what}")
        if self.live is not None:
            if not self.phase.scored:  # the front of trained trials (a scored cloud has none yet)
                front = front_table(collect_result(study, self.ctx), "current Pareto front")
                self.live.update(Group(self.bar, front))
        elif self.enabled and not trial.user_attrs.get("infeasible") and (
                n % self.every == 0 or n == self.total):  # rejections: next line's count
            done = "scored" if self.phase.scored else "trained"
            self.console.print(f"{self.label}: {n}/{self.total} {done}, {what}")

    def __enter__(self) -> SearchProgress:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(Group(self.bar))
            self.live.stop()
