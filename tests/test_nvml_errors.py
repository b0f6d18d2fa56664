"""NVML failures become one line, a hint and their own exit code (the codes are real NVML codes)."""

import fake_pynvml
import pytest

from qwdeploy.cli import app
from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.gpus import nvml


@pytest.mark.parametrize(
    "nvml_error, exit_code",
    [
        ("LIBRARY_NOT_FOUND", ExitCode.NVML_MISSING),
        ("DRIVER_NOT_LOADED", ExitCode.NVML_MISSING),
        ("NO_PERMISSION", ExitCode.NVML_MISSING),
        ("LIB_RM_VERSION_MISMATCH", ExitCode.NVML_DRIVER_MISMATCH),
    ],
)
def test_each_nvml_init_failure_has_its_exit_code(nvml_error, exit_code):
    with pytest.raises(QwdeployError) as e:
        nvml.inventory(fake_pynvml.failing_init(nvml_error))
    assert e.value.exit_code == exit_code and e.value.hint


def test_driver_mismatch_is_exit_11_with_one_error_line(runner, monkeypatch):
    fake = fake_pynvml.failing_init("LIB_RM_VERSION_MISMATCH")
    monkeypatch.setattr(nvml, "_import_pynvml", lambda: fake)
    result = runner.invoke(app, ["gpus"])
    assert result.exit_code == 11
    assert result.stderr.startswith("Error: the NVIDIA driver library and the loaded kernel module")
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_missing_nvidia_ml_py_is_exit_10(runner, monkeypatch):
    def no_pynvml():
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(nvml, "_import_pynvml", no_pynvml)
    result = runner.invoke(app, ["gpus"])
    assert result.exit_code == 10 and "pip install nvidia-ml-py" in result.stderr


def test_plan_names_the_gpu_flag_when_nvml_is_missing(runner, monkeypatch):
    fake = fake_pynvml.failing_init("DRIVER_NOT_LOADED")
    monkeypatch.setattr(nvml, "_import_pynvml", lambda: fake)
    result = runner.invoke(app, ["plan", "Qwen/Qwen3-8B"])
    assert result.exit_code == 10 and "qwdeploy plan MODEL --gpu H100" in result.stderr
