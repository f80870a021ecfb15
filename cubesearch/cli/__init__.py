"""The `cubesearch` command: a thin Typer layer over the Python API.

Every command exits 0 on success and 1 on a user error, printed as one `error: …` line on
stderr (the traceback only with `--debug`). Command modules register themselves on `app`.
"""

from __future__ import annotations

import inspect
import sys
import traceback
import warnings

import click

from cubesearch.cli.app import app
from cubesearch.core.errors import one_line, os_error_line
from cubesearch.core.redact import mask_secrets

# Each module adds its commands to `app` on import (one module per step of the data flow).
from cubesearch.cli import demo as _demo  # noqa: E402,F401  isort: skip
from cubesearch.cli import convert as _convert  # noqa: E402,F401  isort: skip
from cubesearch.cli import train as _train  # noqa: E402,F401  isort: skip
from cubesearch.cli import data as _data  # noqa: E402,F401  isort: skip
from cubesearch.cli import search as _search  # noqa: E402,F401  isort: skip
from cubesearch.cli import export as _export  # noqa: E402,F401  isort: skip
from cubesearch.cli import finetune as _finetune  # noqa: E402,F401  isort: skip
from cubesearch.cli import calibrate as _calibrate  # noqa: E402,F401  isort: skip
from cubesearch.cli import profile as _profile  # noqa: E402,F401  isort: skip
from cubesearch.cli import ablate as _ablate  # noqa: E402,F401  isort: skip
from cubesearch.cli import map as _map  # noqa: E402,F401  isort: skip

__all__ = ["app", "main"]


def unwrap(text: str | None) -> str | None:
    """A docstring as help: its paragraphs each on one line (Typer's rich help keeps the
    docstring's line breaks after the first paragraph, which broke sentences mid-line)."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


for _info in app.registered_commands:  # every command's help, from its docstring
    _info.help = _info.help or unwrap(_info.callback.__doc__ if _info.callback else None)

try:  # Typer ≥ 0.20 raises its own copy of click's usage errors
    from typer._click.exceptions import ClickException as _TyperClickException

    USAGE_ERRORS: tuple[type[Exception], ...] = (click.ClickException, _TyperClickException)
except ImportError:  # pragma: no cover - older Typer: click's own
    USAGE_ERRORS = (click.ClickException,)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|timm|fvcore)\..*")
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        result = app(args=args, prog_name="cubesearch", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        print("error: aborted", file=sys.stderr)
        return 1
    except USAGE_ERRORS as exc:  # usage errors: bad option, missing argument…
        # (format_message names the option: "Invalid value for '--trials': …")
        print(f"error: {mask_secrets(exc.format_message())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1
    except OSError as exc:  # a path problem no command foresaw: name the path, not the errno
        if debug:
            traceback.print_exc()
        print(f"error: {mask_secrets(os_error_line(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line for the user, traceback on request
        if debug:
            traceback.print_exc()
        print(f"error: {mask_secrets(one_line(exc))}", file=sys.stderr)  # no password shown
        return 1
    return result if isinstance(result, int) else 0


def _entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

