"""The real nvidia-ml-py on a machine without NVIDIA driver: one line, the documented exit code."""

import subprocess
import sys

import pytest

from qwdeploy.errors import ExitCode


def _driver_present() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


pytestmark = pytest.mark.skipif(_driver_present(), reason="an NVIDIA driver is present here")


def _qwdeploy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qwdeploy", *args], capture_output=True, text=True, timeout=60)


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert lines[0].startswith("Error: ") and "Traceback" not in stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("Hint: "))
    return stderr


def test_nvidia_ml_py_is_the_real_one_here():
    import pynvml

    assert "site-packages" in pynvml.__file__ and "fake" not in pynvml.__file__


def test_gpus_without_a_driver_exits_10_with_one_line():
    result = _qwdeploy("gpus")
    assert result.returncode == ExitCode.NVML_MISSING == 10
    assert "libnvidia-ml" in _one_error_line(result.stderr)


def test_gpus_json_without_a_driver_prints_nothing_on_stdout():
    result = _qwdeploy("gpus", "--json")
    assert result.returncode == 10 and result.stdout == ""
    _one_error_line(result.stderr)


def test_plan_without_gpu_flag_exits_10_and_says_to_name_a_gpu():
    result = _qwdeploy("plan", "Qwen/Qwen3-8B")
    assert result.returncode == 10
    assert "--gpu H100" in _one_error_line(result.stderr).splitlines()[-1]


def test_plan_with_gpu_flag_needs_no_driver():
    assert _qwdeploy("plan", "Qwen/Qwen3-8B", "--gpu", "H100", "--json").returncode == 0
