"""Where qwdeploy keeps its state: one cache root for compile caches, logs and calibration records."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """$QWDEPLOY_CACHE_DIR, else $XDG_CACHE_HOME/qwdeploy, else ~/.cache/qwdeploy."""
    env = os.environ if env is None else env
    if env.get("QWDEPLOY_CACHE_DIR"):
        return Path(env["QWDEPLOY_CACHE_DIR"]).expanduser()
    xdg = env.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "qwdeploy"
