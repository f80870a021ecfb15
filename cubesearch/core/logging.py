"""cubesearch's log, modelled on `optuna.logging`.

Every module logs through `get_logger(__name__)`, a child of the `cubesearch` logger. On first
use that logger gets one handler of its own, at INFO, that does not propagate to the root
logger: it writes each message as one line on stderr — through rich when stderr is a terminal,
plain text otherwise (a log file, CI, a test capturing stderr). Applications that configure
`logging` themselves call `disable_default_handler()` and `enable_propagation()`;
`set_verbosity(logging.WARNING)` silences the progress lines.

`progress_enabled(progress)` is the one place that reads `CUBESEARCH_NO_PROGRESS` (set: no
live bars, whatever the caller asked).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from logging import CRITICAL, DEBUG, ERROR, INFO, WARNING

__all__ = ["CRITICAL", "DEBUG", "ERROR", "INFO", "WARNING", "disable_default_handler",
           "disable_propagation", "enable_default_handler", "enable_propagation", "get_logger",
           "get_verbosity", "progress_enabled", "set_verbosity"]

ROOT = "cubesearch"
NO_PROGRESS_ENV = "CUBESEARCH_NO_PROGRESS"

_lock = threading.Lock()
_default_handler: logging.Handler | None = None


class _StderrHandler(logging.Handler):
    """One line per record on the *current* `sys.stderr` (looked up at each record, so pytest's
    capture and redirections see it): rich on a terminal, plain text elsewhere."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            stream = sys.stderr
            if getattr(stream, "isatty", lambda: False)():
                from rich.console import Console  # rich is only needed on a terminal

                Console(file=stream, highlight=False).print(message, markup=False)
            else:
                stream.write(message + "\n")
                stream.flush()
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def _root() -> logging.Logger:
    global _default_handler
    with _lock:
        logger = logging.getLogger(ROOT)
        if _default_handler is None:
            _default_handler = _StderrHandler()
            _default_handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(_default_handler)
            logger.setLevel(INFO)
            logger.propagate = False
        return logger


def get_logger(name: str = ROOT) -> logging.Logger:
    """The logger of a cubesearch module (`get_logger(__name__)`), set up on first use."""
    _root()
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


def set_verbosity(level: int) -> None:
    """Threshold of the `cubesearch` logger (`logging.INFO` by default)."""
    _root().setLevel(level)


def get_verbosity() -> int:
    return _root().getEffectiveLevel()


def disable_default_handler() -> None:
    """Stop writing to stderr (pair with `enable_propagation()` to use your own handlers)."""
    _root().removeHandler(_default_handler)


def enable_default_handler() -> None:
    _root().addHandler(_default_handler)


def enable_propagation() -> None:
    """Pass records on to the root logger's handlers too."""
    _root().propagate = True


def disable_propagation() -> None:
    _root().propagate = False


def progress_enabled(progress: bool = True) -> bool:
    """Whether live progress (bars, per-evaluation lines) is wanted: `progress`, unless the
    environment sets CUBESEARCH_NO_PROGRESS (tests, scripts)."""
    return bool(progress) and not os.environ.get(NO_PROGRESS_ENV)
