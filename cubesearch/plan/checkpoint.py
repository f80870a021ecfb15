"""Checkpoints: a folder with `plan.json`, `model.safetensors` and (optionally) `metrics.json`.

`save` writes the folder atomically (a temp folder beside it, then a rename), so a reader never
sees half a checkpoint and a failed save leaves nothing behind. `load` rebuilds the model from
the plan's model spec + the plan + the weights: safetensors and JSON only, nothing unpickled.
`manifest.json` records each file's size and SHA-256; `load` refuses a folder without one, with
a file missing, added or altered, so tampering is an error instead of a silently different
model. Model code named by the plan runs only as `cubesearch.models.trust` allows.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from cubesearch.core.errors import CubesearchError, one_line
from cubesearch.core.helpers import file_sha256
from cubesearch.core.version import __version__
from cubesearch.models.load import load_model_from
from cubesearch.models.trust import trust_model_code
from cubesearch.plan.conversion import convert
from cubesearch.plan.plan import Plan

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
MANIFEST = "manifest.json"  # every file's size and SHA-256, checked by `load`
# What a folder may hold for `save` to replace it (anything else means it is not ours).
_OURS = {PLAN_FILE, WEIGHTS_FILE, METRICS_FILE, "README.md", "model.onnx", "model.onnx.data",
         "model.torchscript.pt", "MANIFEST.sha256", "manifest.json"}


def _replaceable(folder: Path) -> bool:
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir()}
    return not names or PLAN_FILE in names or names <= _OURS


def check_destination(folder: str | os.PathLike, *, option: str = "--out",
                      replaceable: bool = True) -> Path:
    """Refuse, before any work, a destination a command could not write: a file, a folder
    holding something else (unless `replaceable` is False: any folder will do), or a place
    under a file or in a folder the user cannot write to. Creates nothing."""
    dest = Path(folder)
    accepted = ("a new folder, an empty one, or a cubesearch checkpoint to replace" if replaceable
                else "a new or existing folder")
    if dest.exists() and not dest.is_dir():
        raise CubesearchError(f"{option} {dest} is a file; give {accepted}")
    if replaceable and not _replaceable(dest):
        raise CubesearchError(f"{option} {dest} exists and is not a cubesearch checkpoint; "
                              f"give {accepted}")
    where = dest.absolute() if dest.exists() else dest.absolute().parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise CubesearchError(f"{option} {dest}: {where} is a file, so no folder can be made "
                              f"there; give {accepted}")
    if not os.access(where, os.W_OK | os.X_OK):
        raise CubesearchError(f"{option} {dest}: cannot write in {where} (permission denied); "
                              "give a folder you can write to")
    return dest


def save(folder: str | os.PathLike, model: nn.Module, plan: Any,
         metrics: dict[str, Any] | None = None) -> Path:
    """Write `plan.json`, `model.safetensors` (the full state dict: weights and BatchNorm
    statistics) and `metrics.json` (when given) into `folder`, replacing a previous checkpoint
    there. A folder holding anything else is refused rather than overwritten."""
    from safetensors.torch import save_model

    dest = Path(folder)
    if not _replaceable(dest):
        raise CubesearchError(f"{dest} exists and is not a cubesearch checkpoint; "
                              "choose a new or empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a checkpoint is not
        plan.save(tmp / PLAN_FILE)
        save_model(model, str(tmp / WEIGHTS_FILE),
                   metadata={"format": "pt", "cubesearch": __version__,
                             "plan_version": str(plan.version), "model": plan.model})
        os.chmod(tmp / WEIGHTS_FILE, 0o666 & ~_umask())
        if metrics is not None:
            (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=_jsonable) + "\n")
        write_manifest(tmp)
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}-{id(tmp)}"
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def write_manifest(folder: Path) -> None:
    """Record the size and SHA-256 of every file in `folder` (call it last, after all writes)."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"version": 1, "files": files}, indent=2) + "\n")


def verify_manifest(folder: Path) -> None:
    """Raise unless `folder` holds a manifest that lists exactly the files in it (none missing,
    none added) with the size and SHA-256 each has now. cubesearch writes one with every folder
    it saves or exports; a folder without one is refused (`load(verify=False)` skips the check
    for a hand-made folder)."""
    manifest = folder / MANIFEST
    hint = " (load(verify=False) / --no-verify skips the check for a folder you made by hand)"
    if not manifest.is_file():
        raise CubesearchError(f"{folder} has no {MANIFEST}: cubesearch writes one with every "
                              f"checkpoint, so this folder cannot be verified{hint}")
    try:
        files = json.loads(manifest.read_text())["files"]
        records = [(name, int(rec["bytes"]), str(rec["sha256"])) for name, rec in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CubesearchError(f"{manifest} is not a valid manifest (altered or truncated)") from None
    if not records:
        raise CubesearchError(f"{manifest} lists no file (altered){hint}")
    bad = [name for name, _, _ in records
           if not isinstance(name, str) or name in ("", ".", "..", MANIFEST) or Path(name).name != name]
    if bad:
        raise CubesearchError(f"{manifest} lists {bad[0]!r}, not a file of this folder (altered)")
    listed = {name for name, _, _ in records}
    extra = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST and p.name not in listed)
    if extra:
        raise CubesearchError(f"{folder / extra[0]} is not listed in {MANIFEST} (added after the "
                              f"folder was written){hint}")
    for name, size, digest in records:
        path = folder / name
        if not path.is_file():
            raise CubesearchError(f"{path} is missing (listed in {MANIFEST})")
        actual = path.stat().st_size
        if actual != size:
            raise CubesearchError(f"{path} is {actual} bytes but {size} were written "
                                  "(truncated or altered)")
        if file_sha256(path) != digest:
            raise CubesearchError(f"{path} does not match the SHA-256 recorded when it was written "
                                  "(altered)")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _jsonable(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


_VERIFY: contextvars.ContextVar[bool] = contextvars.ContextVar("cubesearch_verify", default=True)


@contextlib.contextmanager
def verification(enabled: bool) -> Iterator[None]:
    """`load` calls within the block verify the manifest or not (the CLI's --no-verify)."""
    token = _VERIFY.set(enabled)
    try:
        yield
    finally:
        _VERIFY.reset(token)


def load(folder: str | os.PathLike, *, device: str = "cpu", strict: bool = True,
         verify: bool | None = None, trust_code: bool = False, model: str | None = None
         ) -> nn.Module:
    """Rebuild a saved model: the plan's model spec (`plan.model`, `plan.model_kwargs`),
    `convert(…, plan)`, then the safetensors weights. Returned in eval mode on `device`.

    The folder must pass `verify_manifest` (`verify=False`, or `with verification(False)`,
    skips it for a hand-made folder).
    A plan naming model *code* (a model.py or package.module:callable) is imported only when
    `cubesearch.models.trust` allows it: `model=` names that same spec, the file is one your own runs
    used (same path, same SHA-256), or `trust_code=True`."""
    from safetensors.torch import load_model as load_weights

    src = Path(folder)
    if not src.exists():
        raise CubesearchError(f"no such checkpoint folder: {src}")
    if not (src / PLAN_FILE).exists():
        raise CubesearchError(f"{src} is not a cubesearch checkpoint (no {PLAN_FILE})")
    weights = src / WEIGHTS_FILE
    if not weights.exists():
        raise CubesearchError(f"{src} has no {WEIGHTS_FILE}")
    if _VERIFY.get() if verify is None else verify:
        verify_manifest(src)
    plan = Plan.load(src / PLAN_FILE)
    with trust_model_code(trust_code, specs=[model] if model else ()):
        net = load_model_from(plan.model, source=src / PLAN_FILE, folder=src,
                              **dict(plan.model_kwargs))
    net = convert(net, plan)
    try:
        missing, unexpected = load_weights(net, weights, strict=False, device=device)
    except Exception as exc:  # noqa: BLE001 - shape mismatch, corrupt file…
        raise CubesearchError(f"{weights}: cannot load the weights: "
                              f"{one_line(exc)}") from exc
    if strict and (missing or unexpected):
        detail = (f"missing {', '.join(missing[:3])}" if missing else "") + (
            ("; " if missing and unexpected else "")
            + (f"unexpected {', '.join(unexpected[:3])}" if unexpected else ""))
        raise CubesearchError(f"{weights} does not match the model its plan builds: {detail}")
    return net.to(device).eval()
