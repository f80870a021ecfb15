"""Which model code cubesearch imports when a spec comes from a file someone else may have written.

A plan, a checkpoint or a study names the model it was made from. `timm:` and `smp:` specs only
build library models and are used freely. A spec naming *code* — a `model.py` path or a
`package.module:callable` — is imported only when one of these holds:

(a) the user names that same spec (on the command line, or `load(folder, model=SPEC)`);
(b) it is a model *file* the user's own runs used: every time cubesearch builds a model from a
    file the user named, it records the file's resolved path and SHA-256 in a small store on this
    machine (`$CUBESEARCH_TRUST_STORE`, default `~/.local/state/cubesearch/trusted-model-files.json`),
    and a later load imports that path only while the file there still has that hash. A
    `package.module:callable` read from a file never qualifies under (b);
(c) the user says so: `--trust-model-code` on the command line, `trust_code=True` in Python
    (or `with trust_model_code(): …`).

Otherwise the load stops with one line naming the spec and the flag, before anything is
imported. The store lives on the user's machine, not in the folder being loaded, so a folder
cannot vouch for itself. `model_kwargs` read from a file are plain JSON scalars or lists, and
never the keys that make timm / smp read weights from a path or URL.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cubesearch.core.errors import CubesearchError
from cubesearch.core.helpers import atomic_write, file_lock, file_sha256
from cubesearch.models.specs import parse_spec

TRUST_FLAG = "--trust-model-code"
STORE_ENV = "CUBESEARCH_TRUST_STORE"
# Factory arguments that make timm / smp read weights (a pickle, a URL) named by the file.
WEIGHT_KWARGS = frozenset({"checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay",
                           "encoder_weights", "pretrained_strict", "cache_dir"})

# (trust every spec, specs the user named) for the code running in this context.
_TRUST: contextvars.ContextVar[tuple[bool, tuple[str, ...]]] = contextvars.ContextVar(
    "cubesearch_trust", default=(False, ()))
# Files this process built models from (path -> SHA-256): trusted even when the store cannot
# be written (a read-only home).
_SEEN: dict[str, str] = {}


@contextlib.contextmanager
def trust_model_code(enabled: bool = True, specs: Iterable[str] = ()) -> Iterator[None]:
    """Within the block, specs read from files are imported when `enabled` (the CLI's
    --trust-model-code), or when they equal one of `specs` (specs the user named)."""
    trust_all, named = _TRUST.get()
    token = _TRUST.set((trust_all or bool(enabled), (*named, *[s for s in specs if s])))
    try:
        yield
    finally:
        _TRUST.reset(token)


# --- the store of model files the user's own runs used ---------------------------------------


def store_path() -> Path:
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cubesearch" / "trusted-model-files.json"


def _read_store(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
        files = data.get("files", {}) if isinstance(data, dict) else {}
        return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}
    except (OSError, ValueError):
        return {}


def record_model_file(file: str | os.PathLike) -> None:
    """Remember that the user's own run built a model from `file` (resolved path + SHA-256).
    Best effort: an unwritable store only means later loads of it need the flag."""
    try:
        resolved = Path(file).resolve()
        digest = file_sha256(resolved)
        _SEEN[str(resolved)] = digest
        store = store_path()
        if _read_store(store).get(str(resolved)) == digest:
            return
        with file_lock(store.with_name(store.name + ".lock")):
            files = _read_store(store)
            files[str(resolved)] = digest
            atomic_write(store, json.dumps({"version": 1, "files": files}, indent=1))
    except OSError:
        return


def is_recorded(file: str | os.PathLike) -> bool:
    """True when the user's own run used this very file: same resolved path, same SHA-256."""
    try:
        resolved = Path(file).resolve()
        if not resolved.is_file():
            return False
        digest = file_sha256(resolved)
        return digest in (_SEEN.get(str(resolved)), _read_store(store_path()).get(str(resolved)))
    except OSError:
        return False


# --- the check --------------------------------------------------------------------------------


def _same_spec(a: str, b: str) -> bool:
    """Two specs name the same code: equal text, or the same file (resolved) and attribute."""

    if a.strip() == b.strip():
        return True
    try:
        pa, pb = parse_spec(a), parse_spec(b)
    except CubesearchError:
        return False
    if pa.kind == pb.kind == "file":
        with contextlib.suppress(OSError):
            return (Path(pa.name).resolve() == Path(pb.name).resolve()
                    and (pa.attr or None) == (pb.attr or None))
    return False


def _candidates(spec: Any, folder: Path | None) -> list[str]:
    """Where a file spec may be: as given, then relative to the folder and its parents (a
    checkpoint moved together with its model file)."""
    path = Path(spec.name)
    suffix = f":{spec.attr}" if spec.attr else ""
    found = [spec.text] if path.exists() or path.is_absolute() or folder is None else []
    if folder is not None and not path.is_absolute():
        for base in (folder, *folder.resolve().parents):
            candidate = base / path
            if candidate.exists() and str(candidate) + suffix not in found:
                found.append(str(candidate) + suffix)
    return found or [spec.text]


def checked_spec(spec: str, *, source: str | os.PathLike, folder: str | os.PathLike | None = None,
                 trust_code: bool = False, user_specs: Iterable[str] = ()) -> str:
    """The spec to build for a model named by a file (`source`: the plan / checkpoint / study
    it came from), or a `CubesearchError` when it names code the user has not trusted. A file
    spec comes back resolved (relative to `folder` and its parents when not found as given)."""

    text = str(spec)
    if text.startswith(("timm:", "smp:")):
        return text
    parsed = parse_spec(text)
    trust_all, named = _TRUST.get()
    named = (*named, *user_specs)
    base = Path(folder) if folder is not None else None
    candidates = _candidates(parsed, base) if parsed.kind == "file" else [text]
    if trust_code or trust_all:
        return candidates[0]
    for candidate in candidates:
        if any(_same_spec(candidate, u) or _same_spec(text, u) for u in named):
            return candidate
        if parsed.kind == "file":
            file = parse_spec(candidate).name
            if Path(file).is_file() and is_recorded(file):
                return candidate
    kind = "a Python file" if parsed.kind == "file" else "an importable callable"
    why = ("it is not a model file your own runs used (or it changed since)"
           if parsed.kind == "file" else "specs read from a file are never imported unasked")
    raise CubesearchError(
        f"{source} names model code {text!r} ({kind}); {why}, so nothing was imported: name that "
        f"model yourself or pass {TRUST_FLAG} (trust_code=True in Python) if you trust it")


def file_kwargs(kwargs: Any, source: str | os.PathLike) -> dict[str, Any]:
    """`model_kwargs` read from a file: plain JSON scalars or lists, and none of the keys that
    make a factory read weights from a path or URL (a checkpoint brings its own weights)."""
    if not isinstance(kwargs, dict):
        raise CubesearchError(f"{source}: model_kwargs must be a JSON object of plain values")
    out = {}
    for key, value in kwargs.items():
        if key in WEIGHT_KWARGS:
            raise CubesearchError(
                f"{source}: model_kwargs.{key} is refused in a file (it makes the factory read "
                f"weights from elsewhere); accepted: plain values such as num_classes, in_channels")
        if not plain_json(value):
            raise CubesearchError(
                f"{source}: model_kwargs.{key} must be a plain JSON value (a number, string, "
                f"true/false, null or a list of them), got {type(value).__name__}")
        out[str(key)] = value
    return out


def plain_json(value: Any, depth: int = 0) -> bool:
    """A plain JSON value: null, a number, string, true/false, or a list of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)) and depth < 4:
        return all(plain_json(v, depth + 1) for v in value)
    return False
