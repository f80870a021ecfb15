"""User-facing errors: the CLI prints them as one `error: …` line and exits 1."""

from __future__ import annotations

__all__ = ["CubesearchError", "one_line"]


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
