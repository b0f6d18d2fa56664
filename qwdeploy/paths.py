"""Where qwdeploy keeps its state: one cache root for compile caches, logs and calibration records."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """$QWDEPLOY_CACHE_DIR, else $XDG_CACHE_HOME/qwdeploy, else ~/.cache/qwdeploy."""
    env = os.environ if env is None else env
    if env.get("QWDEPLOY_CACHE_DIR"):
        return Path(os.path.expanduser(env["QWDEPLOY_CACHE_DIR"]))
    xdg = env.get("XDG_CACHE_HOME")
    return (Path(os.path.expanduser(xdg)) if xdg else Path.home() / ".cache") / "qwdeploy"


def unwritable(directory: Path) -> str | None:
    """Why files cannot be written under `directory` (created when missing), or None when they can.

    Leaves the disk as it was: the nearest existing ancestor gets an empty probe directory that is
    removed at once. This catches what permission bits alone do not (a read-only mount, /proc, a
    root user's view), so a dry run can refuse the same directories a real run would fail on.
    """
    try:
        existing = next(p for p in (directory, *directory.parents) if os.path.lexists(p))
    except StopIteration:  # a relative path in a directory that is gone
        return f"{directory}: no such directory"
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".qwdeploy-probe-", dir=existing))
    except OSError as e:
        return f"cannot create anything in {existing} ({e.strerror or e})"
    return None
