"""The latency table: measured microseconds keyed by a device fingerprint, as JSON.

    {"version": 1, "fingerprint": {...}, "timer": "perf_counter", "repeats": 5, "warmup": 1,
     "models": {"smp:Unet:resnet18|3x512x512|classes=1": {
         "model": ..., "input_size": [3, 512, 512], "layout": "channels_last",
         "base_us": 123456.0, "base_us_by_layout": {...},
         "sites": {"decoder.blocks.0.conv1.0": {"in": 768, "out": 256, "stride": 1, "groups": 1,
                                                "bias": false, "calls": [[32, 32]]}},
         "correction": null}},
     "ops": {"channels_last|conv|768->256|s1|g1|b0|32x32": 2345.6,
             "channels_last|block|768->256|s1|32x32|s2 g4 pre att d1 k3 gelu": 987.6}}

Ops are keyed by what decides their time (layout, shapes, the block's config), not by site, so a
shape met at several sites (or in several models) is measured once. A table is reused only on
the device it was measured on: `LatencyTable.open` starts a new one when the fingerprint differs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cubesearch.blocks import CubeConfig
from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import atomic_write
from cubesearch.cost.latency.fingerprint import Fingerprint

TABLE_VERSION = 1


def model_key(spec: str, input_size: Sequence[int], num_classes: int = 1,
              model_kwargs: Mapping[str, Any] | None = None) -> str:
    """The table's key of a model: another factory argument (`width=32`) is another model."""
    c, h, w = (int(v) for v in input_size)
    extra = "".join(f"|{k}={json.dumps(v)}" for k, v in sorted((model_kwargs or {}).items()))
    return f"{spec}|{c}x{h}x{w}|classes={num_classes}{extra}"


def conv_key(layout: str, cin: int, cout: int, stride: int, groups: int, bias: bool,
             hw: Sequence[int]) -> str:
    return f"{layout}|conv|{cin}->{cout}|s{stride}|g{groups}|b{int(bool(bias))}|{hw[0]}x{hw[1]}"


def block_key(layout: str, cin: int, cout: int, stride: int, hw: Sequence[int],
              config: CubeConfig) -> str:
    return f"{layout}|block|{cin}->{cout}|s{stride}|{hw[0]}x{hw[1]}|{config.short()}"


@dataclass
class LatencyTable:
    fingerprint: Fingerprint
    timer: str = "perf_counter"
    repeats: int = 5
    warmup: int = 1
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    ops: dict[str, float] = field(default_factory=dict)
    version: int = TABLE_VERSION

    # --- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "fingerprint": self.fingerprint.to_dict(),
                "timer": self.timer, "repeats": self.repeats, "warmup": self.warmup,
                "models": self.models, "ops": dict(sorted(self.ops.items()))}

    @classmethod
    def from_dict(cls, data: Any, source: str = "latency table") -> LatencyTable:
        if not isinstance(data, dict) or "fingerprint" not in data:
            raise CubesearchError(f"{source}: not a cubesearch latency table (no fingerprint)")
        if data.get("version") != TABLE_VERSION:
            raise CubesearchError(f"{source}: latency table version {data.get('version')!r} is not "
                                  f"supported (this cubesearch reads version {TABLE_VERSION})")
        return cls(fingerprint=Fingerprint.from_dict(data["fingerprint"]),
                   timer=str(data.get("timer", "perf_counter")),
                   repeats=int(data.get("repeats", 5)), warmup=int(data.get("warmup", 1)),
                   models=dict(data.get("models") or {}),
                   ops={str(k): float(v) for k, v in (data.get("ops") or {}).items()})

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.exists():
            raise CubesearchError(f"latency table not found: {path} (make one with "
                                  "`cubesearch profile MODEL -o FILE`)")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CubesearchError(f"{path}: not a readable latency table ({exc})") from None
        return cls.from_dict(data, str(path))

    def save(self, path: str | Path) -> Path:
        """Write atomically (`helpers.atomic_write`)."""
        return atomic_write(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def open(cls, path: str | Path | None, fingerprint: Fingerprint, *, reprofile: bool = False
             ) -> tuple[LatencyTable, str]:
        """The table at `path` if it was measured with `fingerprint`, else a new empty one.

        Returns (table, status): `new` (no file), `reused`, or `re-measuring (…)` naming what
        differs; `reprofile=True` always starts afresh.
        """
        if path is None or not Path(path).exists():
            return cls(fingerprint=fingerprint), "new"
        old = cls.load(path)
        if reprofile:
            return cls(fingerprint=fingerprint), "re-measuring (--reprofile)"
        if old.fingerprint != fingerprint:
            diffs = "; ".join(old.fingerprint.differences(fingerprint))
            return cls(fingerprint=fingerprint), f"re-measuring (another device: {diffs})"
        return old, "reused"

    # --- checks ------------------------------------------------------------------------------

    def check_device(self, fingerprint: Fingerprint, where: str = "latency table") -> None:
        """One clear error when this table was measured on another device."""
        if self.fingerprint != fingerprint:
            diffs = "; ".join(self.fingerprint.differences(fingerprint))
            raise CubesearchError(
                f"{where} was measured on another device ({diffs}); re-profile here "
                "(`cubesearch profile … ` or --reprofile)")

    def model(self, key: str) -> dict[str, Any]:
        try:
            return self.models[key]
        except KeyError:
            known = ", ".join(self.models) or "none"
            raise CubesearchError(f"the latency table has no profile of {key} (profiled: {known}); "
                                  "run `cubesearch profile` for it") from None
