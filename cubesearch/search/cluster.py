"""Connecting to a Ray cluster: what the Ray backend and the site map's Ray tasks share.
Ray is an optional extra, imported when it is needed (it is slow to import)."""

from __future__ import annotations

import logging
import os
import socket
from types import ModuleType

from cubesearch.core.errors import CubesearchError, one_line
from cubesearch.search.settings import SearchSettings

INSTALL_HINT = "pip install 'cubesearch[ray]'"


def require_ray() -> ModuleType:
    """`ray` (with Ray Tune), or a `CubesearchError` naming the extra to install."""
    try:
        import ray
        import ray.tune  # noqa: F401  (the backend's half of the extra)
    except ImportError as exc:
        raise CubesearchError(f"--backend ray needs Ray Tune, which is not installed ({exc}); "
                              f"install it with: {INSTALL_HINT}") from None
    return ray


def _reachable(address: str, timeout: float = 5.0) -> str | None:
    """None if HOST:PORT accepts a TCP connection, else why not."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        host, port = address.removeprefix("ray://"), "10001" if address.startswith("ray://") else "6379"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def connect(settings: SearchSettings) -> bool:
    """`ray.init` for the settings; True if this call started Ray (and should shut it down)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    address = settings.address
    how = (" Start one with `ray start --head` on the head node (then pass --address HOST:6379), "
           "or leave out --address to start a local Ray instance.")
    common = {"log_to_driver": False, "logging_level": logging.WARNING,
              "configure_logging": True}
    if address in (None, "", "local"):
        try:
            ray.init(address="local", include_dashboard=False, num_cpus=os.cpu_count(), **common)
        except Exception as exc:
            raise CubesearchError(f"cannot start a local Ray instance: {exc}") from None
        return True
    if address != "auto":
        why = _reachable(address)
        if why is not None:
            raise CubesearchError(f"cannot reach the Ray cluster at {address}: {why}.{how}")
    try:
        ray.init(address=address, **common)
    except Exception as exc:
        message = one_line(exc)
        if "auth" in type(exc).__name__.lower() or "Authentication" in message:
            raise CubesearchError(
                f"the Ray cluster at {address} refused this driver's credentials: {message} "
                "(a cluster with token authentication needs RAY_AUTH_MODE=token and its token)"
            ) from None
        raise CubesearchError(f"cannot connect to the Ray cluster at {address}: {message}.{how}"
                              ) from None
    return True


