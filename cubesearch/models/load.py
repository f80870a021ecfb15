"""Model specs: one string names a model everywhere (docs/design.md §2).

- `timm:NAME`                 → `timm.create_model(NAME, num_classes=…, in_chans=…)`
- `smp:ARCH:ENCODER`          → `segmentation_models_pytorch.create_model(ARCH, ENCODER, …)`
- `path/to/model.py[:NAME]`   → the file's `build_model()` (or module-level `model`), or NAME
- `package.module:callable`   → an importable factory (or module-level nn.Module)

Pretrained weights are off by default (`pretrained=True` passes through to timm / smp). Every
problem with a spec is a `CubesearchError` with one clear line: missing file, syntax error or
exception in the user's file (with file and line), unknown timm/smp name (with close names).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
import traceback
from pathlib import Path
from typing import Any

from torch import nn

from cubesearch.core.errors import CubesearchError, one_line
from cubesearch.core.helpers import close_names
from cubesearch.models.specs import ModelSpec, parse_spec
from cubesearch.models.trust import checked_spec, file_kwargs, record_model_file


def load_model(spec: str, *, num_classes: int = 1, in_channels: int = 3, pretrained: bool = False,
               **kwargs: Any) -> nn.Module:
    """Build the model a spec names. Extra keyword arguments go to the factory (timm / smp /
    the user's callable, where its signature accepts them)."""
    if num_classes < 1:
        raise CubesearchError(f"num_classes must be ≥ 1, got {num_classes}")
    if in_channels < 1:
        raise CubesearchError(f"in_channels must be ≥ 1, got {in_channels}")
    parsed = parse_spec(spec)
    model = _build(parsed, num_classes, in_channels, pretrained, kwargs)
    if parsed.kind == "file":  # the user named this file: later loads of its plans may import it

        record_model_file(parsed.name)
    return model


def load_model_from(spec: str, *, source: str | Path, folder: str | Path | None = None,
                    trust_code: bool = False, **kwargs: Any) -> nn.Module:
    """Build the model a spec *read from a file* names (`source`: the plan, checkpoint or study
    it came from). `timm:` / `smp:` specs build freely; a model file or importable callable only
    when `cubesearch.models.trust` says the user trusts it, else one error line and nothing imported.
    `kwargs` (the file's model_kwargs) must be plain JSON values; `pretrained` is dropped (the
    weights come from the checkpoint)."""

    kwargs = file_kwargs(kwargs, source)
    kwargs.pop("pretrained", None)
    resolved = checked_spec(spec, source=source, folder=folder, trust_code=trust_code)
    num_classes, in_channels = kwargs.pop("num_classes", 1), kwargs.pop("in_channels", 3)
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise CubesearchError(f"{source}: model_kwargs.{key} must be a positive integer, "
                                  f"got {value!r}")
    if num_classes < 1 or in_channels < 1:
        raise CubesearchError(f"{source}: model_kwargs num_classes and in_channels must be ≥ 1")
    return _build(parse_spec(resolved), num_classes, in_channels, False, kwargs)


def _build(parsed: ModelSpec, num_classes: int, in_channels: int, pretrained: bool,
           kwargs: dict[str, Any]) -> nn.Module:
    spec = parsed.text
    if parsed.kind == "timm":
        model = _load_timm(parsed, num_classes, in_channels, pretrained, kwargs)
    elif parsed.kind == "smp":
        model = _load_smp(parsed, num_classes, in_channels, pretrained, kwargs)
    elif parsed.kind == "file":
        model = _load_file(parsed, num_classes, in_channels, pretrained, kwargs)
    else:
        model = _load_import(parsed, num_classes, in_channels, pretrained, kwargs)
    if not isinstance(model, nn.Module):
        raise CubesearchError(f"{spec}: expected a torch.nn.Module, got {type(model).__name__}")
    return model


# --- timm / smp ------------------------------------------------------------------------------


def _close(name: str, names: list[str], n: int = 3) -> str:
    return close_names(name, names, n, cutoff=0.6, loose=True, sep="; ")


def _timm_names() -> list[str]:
    import timm

    return list(timm.list_models())


def _load_timm(spec: ModelSpec, num_classes: int, in_channels: int, pretrained: bool,
               kwargs: dict) -> nn.Module:
    import timm

    if not timm.is_model(spec.name):
        raise CubesearchError(f"unknown timm model {spec.name!r}{_close(spec.name, _timm_names())}")
    try:
        return timm.create_model(spec.name, pretrained=pretrained, num_classes=num_classes,
                                 in_chans=in_channels, **kwargs)
    except Exception as exc:  # noqa: BLE001 - one line for the user
        raise CubesearchError(_factory_error(spec.text, exc, pretrained)) from exc


def smp_architectures() -> dict[str, str]:
    """lower-case name → the class name smp uses (Unet, UnetPlusPlus, …)."""
    import segmentation_models_pytorch as smp

    return {key: cls.__name__ for key, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}


def _smp_encoder_known(encoder: str) -> bool:
    import timm
    from segmentation_models_pytorch.encoders import get_encoder_names

    if encoder.startswith("tu-"):
        return timm.is_model(encoder[3:])
    return encoder in get_encoder_names()


def _load_smp(spec: ModelSpec, num_classes: int, in_channels: int, pretrained: bool,
              kwargs: dict) -> nn.Module:
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.encoders import get_encoder_names

    archs = smp_architectures()
    if spec.name.lower() not in archs:
        raise CubesearchError(
            f"unknown smp architecture {spec.name!r}{_close(spec.name, list(archs.values()))} "
            f"(smp has {', '.join(archs.values())})")
    if not _smp_encoder_known(spec.encoder):
        if spec.encoder.startswith("tu-"):
            hint = _close(spec.encoder[3:], _timm_names())
            hint = hint.replace("did you mean ", "did you mean tu-").replace(", ", ", tu-")
        else:
            hint = _close(spec.encoder, list(get_encoder_names()))
        raise CubesearchError(
            f"unknown smp encoder {spec.encoder!r}{hint} (smp encoders, or tu-<timm name>)")
    weights = kwargs.pop("encoder_weights", "imagenet" if pretrained else None)
    try:
        return smp.create_model(archs[spec.name.lower()], encoder_name=spec.encoder,
                                encoder_weights=weights, in_channels=in_channels,
                                classes=num_classes, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise CubesearchError(_factory_error(spec.text, exc, pretrained)) from exc


def _factory_error(spec: str, exc: BaseException, pretrained: bool) -> str:
    msg = one_line(exc, with_type=True)
    if pretrained and any(w in msg.lower() for w in ("connect", "resolve", "download", "hub", "http",
                                                      "offline", "network")):
        return f"{spec}: could not download pretrained weights ({msg}); try without --pretrained"
    return f"{spec}: could not build the model: {msg}"


# --- user files and importable callables -------------------------------------------------------


def _user_frame(exc: BaseException, filename: str) -> str:
    """`file:line` of the deepest traceback frame inside the user's file (else the deepest)."""
    frames = traceback.extract_tb(exc.__traceback__)
    target = str(Path(filename).resolve())
    mine = [f for f in frames if str(Path(f.filename).resolve()) == target]
    frame = (mine or frames or [None])[-1]
    if frame is None:
        return filename
    return f"{filename}:{frame.lineno}"


def import_file(path: str | Path) -> Any:
    """Import a Python file the user named (a model file, an evaluator) as a fresh module: every
    call re-executes it, under a private name kept in `sys.modules` (pickling finds its
    functions by it), with its own folder on `sys.path` while it runs so that it can import its
    siblings (nothing else of that folder is imported)."""
    file = Path(path)
    shown = str(path)
    if not file.exists():
        raise CubesearchError(f"no such file: {shown}")
    if file.is_dir():
        raise CubesearchError(f"{shown} is a directory, expected a Python file")
    digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", file.stem)
    name = f"cubesearch_user_{stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, file)
    if module_spec is None or module_spec.loader is None:
        raise CubesearchError(f"{shown}: cannot import this file as Python")
    module = importlib.util.module_from_spec(module_spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    parent = str(file.resolve().parent)
    added = parent not in sys.path
    if added:  # let the file import its siblings
        sys.path.insert(0, parent)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as exc:
        _restore(name, previous)
        where = f"{shown}:{exc.lineno}" if exc.lineno else shown
        raise CubesearchError(f"{where}: syntax error: {exc.msg}") from exc
    except Exception as exc:  # noqa: BLE001 - anything the user's code raises at import
        _restore(name, previous)
        raise CubesearchError(
            f"{_user_frame(exc, str(file))}: {one_line(exc, with_type=True)} "
            f"(while importing {shown})") from exc
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(parent)
    return module


def _restore(name: str, previous: Any) -> None:
    if previous is None:
        sys.modules.pop(name, None)
    else:
        sys.modules[name] = previous


def _defined_names(module: Any) -> list[str]:
    names = []
    for key, value in vars(module).items():
        if key.startswith("_"):
            continue
        if isinstance(value, nn.Module) or (
            callable(value) and getattr(value, "__module__", None) == module.__name__
        ):
            names.append(key)
    return names


def _call_factory(obj: Any, where: str, num_classes: int, in_channels: int, pretrained: bool,
                  kwargs: dict, filename: str | None = None) -> Any:
    if isinstance(obj, nn.Module):
        return copy.deepcopy(obj)  # a module-level instance: never hand out the shared object
    if not callable(obj):
        raise CubesearchError(f"{where} is a {type(obj).__name__}, not an nn.Module or a callable")
    offered = {"num_classes": num_classes, "in_channels": in_channels, "pretrained": pretrained,
               **kwargs}
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        call_kwargs = dict(offered)
    else:
        call_kwargs = {k: v for k, v in offered.items() if k in params}
        unknown = sorted(set(kwargs) - set(call_kwargs))
        if unknown:
            raise CubesearchError(f"{where} does not accept {', '.join(unknown)}")
        for key, default in (("num_classes", 1), ("in_channels", 3)):
            if key not in call_kwargs and offered[key] != default:
                raise CubesearchError(
                    f"{where} does not take {key}, so {key}={offered[key]} cannot be applied")
    try:
        return obj(**call_kwargs)
    except CubesearchError:
        raise
    except Exception as exc:  # noqa: BLE001
        loc = _user_frame(exc, filename) if filename else where
        raise CubesearchError(f"{loc}: {one_line(exc, with_type=True)} (while building {where})") from exc


def _load_file(spec: ModelSpec, num_classes: int, in_channels: int, pretrained: bool,
               kwargs: dict) -> nn.Module:
    module = import_file(spec.name)
    if spec.attr:
        if not hasattr(module, spec.attr):
            raise CubesearchError(
                f"{spec.name} has no {spec.attr!r}{_close(spec.attr, _defined_names(module))}")
        attr = spec.attr
    elif hasattr(module, "build_model"):
        attr = "build_model"
    elif hasattr(module, "model"):
        attr = "model"
    else:
        found = _defined_names(module)
        listing = f" (it defines: {', '.join(found[:8])}; pick one with {spec.name}:NAME)" if found else ""
        raise CubesearchError(
            f"{spec.name} defines neither build_model() nor a module-level `model`{listing}")
    return _call_factory(getattr(module, attr), f"{spec.name}:{attr}", num_classes, in_channels,
                         pretrained, kwargs, filename=spec.name)


def _load_import(spec: ModelSpec, num_classes: int, in_channels: int, pretrained: bool,
                 kwargs: dict) -> nn.Module:
    try:
        module = importlib.import_module(spec.name)
    except ModuleNotFoundError as exc:
        raise CubesearchError(f"{spec.text}: no module named {exc.name!r}") from exc
    except Exception as exc:  # noqa: BLE001
        raise CubesearchError(f"{spec.text}: {one_line(exc, with_type=True)} "
                              f"(while importing {spec.name})") from exc
    if not hasattr(module, spec.attr or ""):
        raise CubesearchError(
            f"module {spec.name} has no {spec.attr!r}{_close(spec.attr or '', _defined_names(module))}")
    return _call_factory(getattr(module, spec.attr), spec.text, num_classes, in_channels,
                         pretrained, kwargs, filename=getattr(module, "__file__", None))


def is_smp_model(model: nn.Module) -> bool:
    try:
        from segmentation_models_pytorch.base import SegmentationModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, SegmentationModel)
