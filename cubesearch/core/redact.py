"""Secrets out of what is shown or logged: `mask_url` hides a storage URL's password.

`postgresql+psycopg2://user:PW@host/db` → `postgresql+psycopg2://user:***@host/db`; a password
given as a query parameter (`?password=PW`) is masked too. `mask_secrets(text)` masks every URL
inside a longer text (an error message from a database driver quotes the URL it was given).
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@  — the password is anything up to the last '@' before the host part
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)(?P<pw>[^\s/]*)(?P<at>@)")
_QUERY = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|secret|token)=)(?P<pw>[^&\s'\"]*)",
                    re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """`text` with every URL password (user-info or `password=` query parameter) replaced by ***."""
    if not text:
        return text
    masked = _USERINFO.sub(lambda m: f"{m['head']}{MASK if m['pw'] else ''}{m['at']}", str(text))
    return _QUERY.sub(lambda m: f"{m['head']}{MASK if m['pw'] else ''}", masked)


def mask_url(url: str | None) -> str | None:
    """A storage URL as it may be shown or logged: its password replaced by ***."""
    return None if url is None else mask_secrets(str(url))
