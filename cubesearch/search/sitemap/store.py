"""`OUT/map.json`: the map as it grows, written atomically after every cell.

A run reads the file first and measures only the cells it lacks, so a map killed at any moment
(kill -9 included) loses at most the cells being measured. The file records what makes its cells
comparable (`identity`: the baseline, the distillation, the seed); a run with other values is
refused rather than mixing cells, or silently throwing hours of them away. Each cell keeps the
number of the run that measured it (`run`), so a resumed map shows what it redid: nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import atomic_write

MAP_FILE = "map.json"
MAP_VERSION = 1


def _plain(value: Any) -> Any:
    """NaN and ±inf as null: map.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class MapStore:
    """The cells measured so far, keyed by (site, option), and the map's header."""

    def __init__(self, path: Path, header: dict[str, Any], cells: Iterable[dict[str, Any]] = (),
                 run: int = 1) -> None:
        self.path = path
        self.header = header
        self.cells: dict[tuple[str, str], dict[str, Any]] = {(c["site"], c["option"]): c for c in cells}
        self.run = run

    @classmethod
    def open(cls, out: Path, header: dict[str, Any]) -> MapStore:
        """The map in `out` (its cells kept) or a new one; refused if measured otherwise."""
        path = out / MAP_FILE
        if not path.is_file():
            return cls(path, header)
        try:
            stored = json.loads(path.read_text())
            identity, cells, runs = stored["identity"], list(stored["cells"]), int(stored.get("runs", 0))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CubesearchError(f"{path}: not a map this version wrote ({exc}); move it away or "
                                  "use another --out") from None
        mine = _plain(json.loads(json.dumps(header["identity"], default=str)))
        changed = sorted(k for k in {*identity, *mine} if identity.get(k) != mine.get(k))
        if changed:
            diffs = ", ".join(f"{k}: {identity.get(k)!r} → {mine.get(k)!r}" for k in changed)
            raise CubesearchError(f"{path} was measured with other settings ({diffs}); use the same "
                                  "ones to resume it, or another --out")
        return cls(path, header, cells, run=runs + 1)

    def has(self, key: tuple[str, str]) -> bool:
        return key in self.cells

    def add(self, cell: dict[str, Any]) -> None:
        """Record a measured cell and write the map at once (atomically)."""
        self.cells[(cell["site"], cell["option"])] = {**cell, "run": self.run}
        self.write()

    def ordered(self, order: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        """The cells in `order` (sites in data-flow order, options as listed), measured ones only."""
        return [self.cells[k] for k in order if k in self.cells]

    def write(self, order: Iterable[tuple[str, str]] | None = None) -> Path:
        """The file: the cells in `order` first, then any other it holds (measured for a wider
        space: kept, never thrown away by a narrower run)."""
        first = self.ordered(order) if order is not None else []
        keys = {(c["site"], c["option"]) for c in first}
        cells = first + [c for k, c in self.cells.items() if k not in keys]
        data = {"version": MAP_VERSION, **self.header, "runs": self.run, "cells": cells}
        return atomic_write(self.path, json.dumps(_plain(data), indent=2, default=str))
