"""User-facing errors: the CLI prints them as one `error: …` line and exits 1."""

from __future__ import annotations

__all__ = ["CubesearchError", "one_line", "os_error_line"]


class CubesearchError(Exception):
    """A problem with what the user asked for (bad path, bad spec, bad plan…), not a bug."""


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
