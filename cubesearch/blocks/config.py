"""`CubeConfig`: the block's knobs as frozen, validated data (DESIGN.md §1 table)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class CubeConfig(BaseModel):
    """Knobs of one Cube Kernel block; the defaults are the paper's block.

    Frozen and hashable, so it can key caches and be shared between sites. Bad values raise
    `ValueError` naming the knob and what it accepts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    lattice_stride: Literal[1, 2] = 2
    groups: int = Field(4, ge=1)
    router: Literal["pre", "post", "none"] = "pre"
    attention: bool = True
    depth: int = Field(1, ge=1)
    fusion_kernel: Literal[1, 3] = 3
    act: Literal["gelu", "relu"] = "gelu"

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
        import json

        return cls.from_dict(json.loads(text))

    def short(self) -> str:
        """A compact label for tables: `s2 g4 pre att d1 k3 gelu`."""
        return (
            f"s{self.lattice_stride} g{self.groups} {self.router}"
            f"{' att' if self.attention else ''} d{self.depth} k{self.fusion_kernel} {self.act}"
        )


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        knob = ".".join(str(p) for p in err["loc"]) or "CubeConfig"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            known = ", ".join(CubeConfig.model_fields)
            msg = f"unknown knob (known: {known})"
        parts.append(f"CubeConfig.{knob}: {msg} (got {err.get('input')!r})")
    return "; ".join(parts)
