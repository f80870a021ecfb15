"""User-facing errors: the CLI prints them as one `error: …` line and exits 1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: pydantic loads with the settings models
    from pydantic import ValidationError

__all__ = ["ConfigError", "CubesearchError", "one_line", "option_name", "os_error_line",
           "validation_message"]


class CubesearchError(Exception):
    """A problem with what the user asked for (bad path, bad spec, bad plan…), not a bug."""


class ConfigError(CubesearchError, ValueError):
    """A bad setting of a validated settings model (`TrainConfig`, `SearchSettings`…): one line
    naming the option as the CLI spells it and what it accepts."""


# Fields whose command-line option is not simply the field's name.
CLI_NAMES = {"num_classes": "--classes"}


def option_name(field: str) -> str:
    """The CLI's spelling of a settings field: `batch_size` → `--batch-size`, `num_classes` →
    `--classes`."""
    return CLI_NAMES.get(field, "--" + field.replace("_", "-"))


def validation_message(exc: ValidationError, known: Any = ()) -> str:
    """One line for the first problem pydantic found, in the CLI's words: a validator's own
    message as it is, an unknown option with the `known` ones, else `--option: what (got …)`."""
    errors = exc.errors()
    err = errors[0]
    field = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        text = f"unknown option {field!r} (known: {', '.join(known)})"
    elif err["type"] == "value_error":
        text = str(err["msg"]).removeprefix("Value error, ")
    else:
        text = f"{option_name(field)}: {err['msg']} (got {err.get('input')!r})"
    more = len(errors) - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def one_line(exc: BaseException, *, with_type: bool = False, limit: int | None = None) -> str:
    """The first line of `exc`'s message, for a one-line report; the exception's class name
    when the message is empty. `with_type` prefixes the class name (`ValueError: …`), `limit`
    cuts the result to that many characters."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    out = line if line and not with_type else type(exc).__name__
    if line and with_type:
        out = f"{out}: {line}"
    return out[:limit] if limit is not None else out


def os_error_line(exc: OSError) -> str:
    """A file-system error as one line naming the path and what would work, instead of
    `[Errno 17] File exists: 'out'`."""
    import errno
    import os

    path = exc.filename if exc.filename is not None else "a file"
    code = exc.errno
    if code == errno.EEXIST:
        kind = "a file" if os.path.isfile(path) else "a folder" if os.path.isdir(path) else "there"
        return f"{path} already exists ({kind}) where cubesearch needed to create it; choose a new path"
    if code == errno.ENOTDIR:
        return f"{path}: part of this path is a file, not a folder; choose a path inside a folder"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: permission denied; choose a path you can write to"
    if code == errno.ENOSPC:
        return f"no space left on the device while writing {path}; free some space or choose another disk"
    if code == errno.ENOENT:
        return f"{path}: no such file or folder"
    return f"{path}: {exc.strerror or one_line(exc)}"
