"""The loop's callbacks: evaluation, history, progress. Pass your own to
`train(..., callbacks=[...])`: any object with some of the methods of `Callback`.

Each method gets the shared `FitState` (`cubesearch.training.loop`); `on_evaluate` also gets
the new history row: `step`, `epoch`, `lr`, `train_loss`, `train_iou`, `val_loss`, `val_oa`,
`val_precision`, `val_recall`, `val_f1`, `val_iou` (`val_miou` with K ≥ 2), `seconds`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cubesearch.core.errors import CubesearchError
from cubesearch.core.progressbar import eta_bar
from cubesearch.training.evaluation import evaluate

VAL_KEYS = ("loss", "oa", "precision", "recall", "f1", "iou", "miou")


class Callback:
    """The events, all optional: subclass and override the ones you need."""

    def on_fit_start(self, state: Any) -> None: ...

    def on_step_end(self, state: Any) -> None: ...

    def on_evaluate_start(self, state: Any) -> None: ...

    def on_evaluate(self, state: Any, row: dict[str, Any]) -> None: ...

    def on_fit_end(self, state: Any) -> None: ...


def eval_points(total: int, per_epoch: int, every: int | None, by_epoch: bool) -> set[int]:
    """The steps after which the model is evaluated: every `every` steps, else each epoch when
    the budget is in epochs; always the last."""
    points = {total}
    if every:
        points |= set(range(int(every), total + 1, int(every)))
    elif by_epoch:
        points |= set(range(per_epoch, total + 1, per_epoch))
    return points


class Evaluation(Callback):
    """Evaluates on `dataset` at `points` and emits `on_evaluate` with the history row; the
    running training metrics restart after each evaluation."""

    def __init__(self, dataset: Any, points: set[int], *, batch_size: int, loss: str,
                 workers: int = 0) -> None:
        self.dataset, self.points = dataset, points
        self.batch_size, self.loss, self.workers = batch_size, loss, workers

    def on_step_end(self, state: Any) -> None:
        if state.step not in self.points:
            return
        state.emit("on_evaluate_start")
        state.val_metrics = evaluate(state.model, self.dataset, batch_size=self.batch_size,
                                     num_classes=state.num_classes, loss=self.loss, amp=state.amp,
                                     _inputs=state.inputs, workers=self.workers)
        train_part = state.running.compute()
        row = {"step": state.step, "epoch": round(state.epoch, 4),
               "lr": state.optimizer.param_groups[0]["lr"], "train_loss": train_part["loss"],
               "train_iou": train_part["iou"],
               **{f"val_{k}": v for k, v in state.val_metrics.items() if k in VAL_KEYS},
               "seconds": round(time.perf_counter() - state.started, 3)}
        state.emit("on_evaluate", row)
        state.running.reset()
        state.model.train()


class DeadlineReached(CubesearchError):
    """A run stopped by its `Deadline`: what it trained is not kept."""


class Deadline(Callback):
    """Stops the run at the wall-clock time `at` (`time.time()`), by raising `DeadlineReached`
    after the step that passes it: a search's `--timeout` bounds its training too."""

    def __init__(self, at: float, what: str = "--timeout") -> None:
        self.at, self.what = at, what

    def on_step_end(self, state: Any) -> None:
        if time.time() >= self.at:
            raise DeadlineReached(f"{self.what} reached at step {state.step} of {state.total_steps}")


class BestWeights(Callback):
    """Keeps the weights of the best validation score (IoU; mIoU with K ≥ 2) and puts them back
    at the end, with their metrics; with `patience`, stops the run after that many evaluations
    without an improvement above `min_delta` (early stopping)."""

    def __init__(self, patience: int | None = None, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.best_step = 0
        self.since_best = 0
        self.weights: dict[str, Any] | None = None
        self.metrics: dict[str, Any] = {}

    def on_evaluate(self, state: Any, row: dict[str, Any]) -> None:
        score = float(state.val_metrics.get("miou") or state.val_metrics["iou"]) \
            if state.num_classes > 1 else float(state.val_metrics["iou"])
        if self.best is None or score > self.best + self.min_delta:
            self.best, self.best_step, self.since_best = score, state.step, 0
            self.weights = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
            self.metrics = dict(state.val_metrics)
            return
        self.since_best += 1
        if self.patience is not None and self.since_best >= self.patience:
            state.stop = True

    def on_fit_end(self, state: Any) -> None:
        if self.weights is None:
            return
        state.model.load_state_dict(self.weights)
        state.val_metrics = dict(self.metrics)
        state.best_step = self.best_step


class History(Callback):
    """Keeps every evaluation's row in `state.history` (what `TrainResult.history` returns)."""

    def on_evaluate(self, state: Any, row: dict[str, Any]) -> None:
        state.history.append(row)


class ProgressBar(Callback):
    """A live rich bar on a terminal (loss, IoU, speed); elsewhere (a log file, CI), one
    `log` line per evaluation instead. `show=False`: nothing."""

    def __init__(self, console: Any, show: bool, log: Callable[[str], None]) -> None:
        self.console, self.show, self.log = console, show, log
        self.live = show and console.is_terminal
        self.bar: Any = None
        self.task: Any = None

    def on_fit_start(self, state: Any) -> None:
        self.bar = eta_bar("[bold]{task.description}", self.console, enabled=self.live,
                           status="{task.fields[info]}")
        self.task = self.bar.add_task("train", total=state.total_steps, info="")
        self.bar.start()

    def _info(self, state: Any) -> str:
        live = state.running.compute()
        info = f"loss {live['loss']:.4f} · IoU {live['iou']:.3f}"
        if state.val_metrics:
            info += f" · val IoU {state.val_metrics['iou']:.3f}"
        return info

    def on_step_end(self, state: Any) -> None:
        if self.live:
            speed = state.images / max(state.train_seconds, 1e-9)
            self.bar.update(self.task, completed=state.step, info=f"{self._info(state)} · {speed:.1f} img/s")

    def on_evaluate_start(self, state: Any) -> None:
        if self.live:
            self.bar.update(self.task, info=self._info(state) + " · evaluating…")

    def on_evaluate(self, state: Any, row: dict[str, Any]) -> None:
        info = (f"loss {row['train_loss']:.4f} · val loss {state.val_metrics['loss']:.4f} · "
                f"val IoU {state.val_metrics['iou']:.3f}")
        if self.live:
            self.bar.update(self.task, info=info)
        elif self.show:
            self.log(f"train: step {state.step}/{state.total_steps} (epoch {row['epoch']:g}): {info}")

    def on_fit_end(self, state: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
