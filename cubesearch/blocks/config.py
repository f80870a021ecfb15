"""`CubeConfig`: the block's knobs as frozen, validated data (docs/design.md §1 table)."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

MAX_DEPTH = 8  # stacked units per block: deeper blocks cost minutes and gigabytes for nothing
MAX_GROUPS = 1024
_ACCEPTED = {"lattice_stride": "1 or 2", "fusion_kernel": "1 or 3",
             "groups": f"an integer 1…{MAX_GROUPS}", "depth": f"an integer 1…{MAX_DEPTH}"}


def lattice_channels(in_channels: int) -> int:
    """`C = 4·ceil(C_in/4)`: the router pads to a multiple of 4."""
    return 4 * math.ceil(in_channels / 4)


def fusion_groups(groups: int, in_channels: int, out_channels: int) -> int:
    """G must divide the fusion conv's in and out channels; otherwise fall back to the gcd."""
    return math.gcd(groups, math.gcd(in_channels, out_channels))


class CubeConfig(BaseModel):
    """Knobs of one Cube Kernel block; the defaults are the paper's block.

    Frozen and hashable, so it can key caches and be shared between sites. Bad values raise
    `ValueError` naming the knob and what it accepts: integers are integers (`true` is not 1),
    `depth` is 1…8, `groups` 1…1024. `groups` is what the fusion conv asks for; where it does
    not divide that conv's channels the block uses their gcd, and `convert` reports the value
    used (`groups_used`, and `short(groups_used)` in its tables).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    lattice_stride: Literal[1, 2] = 2
    groups: int = Field(4, ge=1, le=MAX_GROUPS)
    router: Literal["pre", "post", "none"] = "pre"
    attention: bool = True
    depth: int = Field(1, ge=1, le=MAX_DEPTH)
    fusion_kernel: Literal[1, 3] = 3
    act: Literal["gelu", "relu"] = "gelu"

    @field_validator("lattice_stride", "groups", "depth", "fusion_kernel", mode="before")
    @classmethod
    def _not_bool(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, bool):  # bool is an int subclass: true would pass as 1
            raise ValueError(f"expected {_ACCEPTED[info.field_name]}, not a boolean")
        return v

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ValueError(_one_line(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CubeConfig:
        if not isinstance(data, dict):
            raise ValueError(f"CubeConfig: expected a mapping of knobs, got {type(data).__name__}")
        return cls(**data)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> CubeConfig:
        return cls.from_dict(json.loads(text))

    def groups_used(self, in_channels: int, out_channels: int) -> int:
        """The fusion-conv groups a block with these knobs really uses between in → out
        channels: `groups`, or the gcd with the fusion conv's channels where it does not divide
        them (the smallest over the stacked units)."""
        used = []
        for cin in (in_channels, *([out_channels] * (self.depth - 1))):
            channels = lattice_channels(cin)
            fusion_in = channels // 4 if self.lattice_stride == 2 else channels
            used.append(fusion_groups(self.groups, fusion_in, out_channels))
        return min(used)

    def short(self, groups_used: int | None = None) -> str:
        """A compact label for tables: `s2 g4 pre att d1 k3 gelu`; with `groups_used` (what a
        block at a given site really uses) different from `groups`: `g1 (of 3)`."""
        g = (f"{groups_used} (of {self.groups})" if groups_used is not None
             and groups_used != self.groups else str(self.groups))
        return (
            f"s{self.lattice_stride} g{g} {self.router}"
            f"{' att' if self.attention else ''} d{self.depth} k{self.fusion_kernel} {self.act}"
        )


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        knob = ".".join(str(p) for p in err["loc"]) or "CubeConfig"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = ", ".join(CubeConfig.model_fields)
            msg = f"unknown knob (known: {known})"
        parts.append(f"CubeConfig.{knob}: {msg} (got {err.get('input')!r})")
    return "; ".join(parts)
