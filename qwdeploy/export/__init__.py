"""Hot-standby exports of a plan: a systemd unit, a docker compose file, Kubernetes manifests. Pure.

One module per format; each is a function Plan -> text, from the same `Plan` that `serve` runs.
"""

from __future__ import annotations

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.export.common import (
    DEFAULT_OPTIONS,
    ExportOptions,
    command_line,
    default_name,
    exposure_warning,
    vllm_argv,
)
from qwdeploy.export.compose import compose
from qwdeploy.export.k8s import kubernetes
from qwdeploy.export.systemd import systemd
from qwdeploy.planning.plan import Plan

FORMATS = ("systemd", "compose", "k8s")

__all__ = [
    "FORMATS",
    "ExportOptions",
    "command_line",
    "compose",
    "default_name",
    "exposure_warning",
    "kubernetes",
    "render",
    "systemd",
    "vllm_argv",
]


def render(fmt: str, plan: Plan, opts: ExportOptions = DEFAULT_OPTIONS) -> str:
    """The export `fmt` (systemd, compose or k8s) of `plan`."""
    if fmt not in FORMATS:
        raise QwdeployError(
            f"unknown export format {fmt!r}",
            hint="one of: " + ", ".join(FORMATS),
            exit_code=ExitCode.USAGE,
        )
    return {"systemd": systemd, "compose": compose, "k8s": kubernetes}[fmt](plan, opts)
