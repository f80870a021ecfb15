"""User-facing errors: the CLI prints them as one `error: …` line and exits 1."""

from __future__ import annotations


class CubesearchError(Exception):
    """A problem with what the user asked for (bad path, bad spec, bad plan…), not a bug."""
