"""Model spec strings parsed into their parts, without importing or reading anything: the one
place both model loading (`models.py`) and the trust rules (`trust.py`) read a spec."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cubesearch.core.errors import CubesearchError

SPEC_FORMS = "timm:NAME, smp:ARCH:ENCODER, path/to/model.py[:NAME] or package.module:callable"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. `kind` is one of timm, smp, file, import."""

    kind: str
    text: str
    name: str = ""  # timm model / smp arch / file path / module path
    encoder: str = ""  # smp encoder
    attr: str | None = None  # file or module attribute
    extra: dict[str, Any] = field(default_factory=dict)


def parse_spec(spec: str) -> ModelSpec:
    """Split a spec string into its parts; no imports, no file reads beyond `exists()`."""
    if not isinstance(spec, str) or not spec.strip():
        raise CubesearchError(f"empty model spec (expected {SPEC_FORMS})")
    text = spec.strip()
    if text.startswith("timm:"):
        name = text[5:]
        if not name:
            raise CubesearchError(f"model spec {text!r}: missing timm model name (timm:NAME)")
        return ModelSpec("timm", text, name=name)
    if text.startswith("smp:"):
        parts = text[4:].split(":")
        if len(parts) != 2 or not all(parts):
            raise CubesearchError(
                f"model spec {text!r}: expected smp:ARCH:ENCODER, e.g. smp:Unet:resnet34")
        return ModelSpec("smp", text, name=parts[0], encoder=parts[1])
    path, sep, attr = text.rpartition(":") if ":" in text else (text, "", "")
    if not sep:
        path, attr = text, ""
    # A Windows drive letter ("C:\\…") is not an attribute separator.
    if sep and (len(path) == 1 and path.isalpha()):
        path, attr = text, ""
    if path.endswith(".py") or "/" in path or "\\" in path or Path(path).suffix == ".py":
        return ModelSpec("file", text, name=path, attr=attr or None)
    if sep and re.fullmatch(r"[A-Za-z_][\w.]*", path) and re.fullmatch(r"[A-Za-z_]\w*", attr):
        return ModelSpec("import", text, name=path, attr=attr)
    if Path(text).exists():
        return ModelSpec("file", text, name=text)
    raise CubesearchError(f"cannot understand model spec {text!r} (expected {SPEC_FORMS})")
