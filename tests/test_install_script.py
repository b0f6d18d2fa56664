"""scripts/install-test-deps.sh takes torch's CPU build from where pip finds it already (a local
wheel cache, a configured index) and otherwise from the PyTorch project's CPU wheel index.

Runs the script's `--torch-source` step with the real pip and no network: pip's own config is
replaced (PIP_CONFIG_FILE=/dev/null) by a find-links directory that has the wheel, or not."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install-test-deps.sh"
PYTORCH_CPU = ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
ABSENT = "9.9.9+cpu"  # a torch no environment has installed


def torch_source(find_links: Path, torch: str = ABSENT) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(find_links)}
    env |= {"PYTHON": sys.executable, "TORCH_VERSION": torch}
    done = subprocess.run(["bash", str(SCRIPT), "--torch-source"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def fake_torch_wheel(folder: Path, version: str) -> None:
    """A wheel pip accepts as torch==version (metadata only)."""
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(folder / f"torch-{version}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")


def test_without_a_local_wheel_torch_comes_from_the_pytorch_cpu_index(tmp_path):
    assert torch_source(tmp_path) == PYTORCH_CPU


def test_a_torch_wheel_where_pip_looks_is_used_as_it_is(tmp_path):
    fake_torch_wheel(tmp_path, ABSENT)
    assert torch_source(tmp_path) == []


def test_an_installed_torch_of_the_wanted_version_needs_nothing(tmp_path):
    import torch

    assert torch_source(tmp_path, torch.__version__) == []
