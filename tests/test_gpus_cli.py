"""`qwdeploy gpus` on a recorded H100 session: JSON, table, CUDA_VISIBLE_DEVICES, exit codes."""

import json

import fake_pynvml
import pytest

from qwdeploy.cli import app
from qwdeploy.gpus import nvml

IDLE, HELD = "h100_idle", "h100_30pct_held"


@pytest.fixture
def replay(monkeypatch):
    """Make the NVML module replay a recording; returns the fake for its recorded facts."""

    def use(name: str, visible: str | None = None, order: str | None = None):
        fake = fake_pynvml.load(name)
        monkeypatch.setattr(nvml, "_import_pynvml", lambda: fake)
        monkeypatch.setattr(nvml, "_proc_comm", fake.process_name)
        for var, value in (("CUDA_VISIBLE_DEVICES", visible), ("CUDA_DEVICE_ORDER", order)):
            if value is None:
                monkeypatch.delenv(var, raising=False)
            else:
                monkeypatch.setenv(var, value)
        return fake

    return use


def _uuid(fake) -> str:
    return next(c["result"] for c in fake.recording["calls"] if c["call"] == "nvmlDeviceGetUUID")


def _gpus_json(runner) -> dict:
    result = runner.invoke(app, ["gpus", "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("Error: ") and len(lines) <= 2 and "Traceback" not in result.stderr
    return lines[0]


def test_json_lists_the_gpu_under_cuda_index_0(runner, replay):
    fake = replay(IDLE)
    data = _gpus_json(runner)
    (gpu,) = data["gpus"]
    assert (gpu["index"], gpu["uuid"], gpu["mig_mode"]) == (0, _uuid(fake), "disabled")
    assert data["links"] == [] and data["cuda_visible_devices"] is None


def test_json_memory_is_the_recorded_bytes(runner, replay):
    fake = replay(IDLE)
    v2 = next(
        c["result"] for c in fake.recording["calls"] if c["call"] == "nvmlDeviceGetMemoryInfo" and c.get("kwargs")
    )
    gpu = _gpus_json(runner)["gpus"][0]
    assert (
        gpu["memory_total_bytes"],
        gpu["memory_reserved_bytes"],
        gpu["memory_used_bytes"],
        gpu["memory_free_bytes"],
    ) == (v2["total"], v2["reserved"], v2["used"], v2["free"])


def test_json_shows_the_process_holding_memory(runner, replay):
    fake = replay(HELD)
    (proc,) = _gpus_json(runner)["gpus"][0]["processes"]
    assert proc["pid"] == fake.recording["holder"]["holder_pid"] and proc["name"]


def test_table_shows_the_gpu_and_the_driver(runner, replay):
    fake = replay(IDLE)
    driver = next(c["result"] for c in fake.recording["calls"] if c["call"] == "nvmlSystemGetDriverVersion")
    result = runner.invoke(app, ["gpus"])
    assert result.exit_code == 0 and "H100" in result.stdout and f"Driver {driver}" in result.stdout


@pytest.mark.parametrize("visible", ["0", "GPU-", "uuid-prefix", "full-uuid"])
def test_visible_devices_naming_the_gpu_keep_it_as_cuda_0(runner, replay, visible):
    fake = fake_pynvml.load(IDLE)
    visible = {"uuid-prefix": _uuid(fake)[:12], "full-uuid": _uuid(fake)}.get(visible, visible)
    replay(IDLE, visible=visible)
    assert _gpus_json(runner)["gpus"][0]["index"] == 0


@pytest.mark.parametrize("visible", ["1", "GPU-ffffffff-0000", "MIG-ffffffff-0000", "0,0", "h100"])
def test_visible_devices_naming_no_such_gpu_is_exit_13(runner, replay, visible):
    replay(IDLE, visible=visible)
    result = runner.invoke(app, ["gpus"])
    assert result.exit_code == 13 and "CUDA_VISIBLE_DEVICES" in _one_error_line(result)


@pytest.mark.parametrize("visible", ["", "-1"])
def test_visible_devices_hiding_every_gpu_is_exit_12(runner, replay, visible):
    replay(IDLE, visible=visible)
    result = runner.invoke(app, ["gpus"])
    assert result.exit_code == 12 and "hides every GPU" in _one_error_line(result)


def test_entries_after_a_negative_index_are_ignored_as_cuda_does(runner, replay):
    replay(IDLE, visible="0,-1,7")
    data = _gpus_json(runner)
    assert data["gpus"][0]["index"] == 0 and "ignores '7'" in data["notes"][0]


def test_plan_exits_13_for_a_missing_gpu_and_hints_the_valid_ones(runner, replay):
    fake = replay(IDLE, visible="3")
    result = runner.invoke(app, ["plan", "Qwen/Qwen3-8B"])
    assert result.exit_code == 13 and _uuid(fake) in result.stderr and "--gpu H100" in result.stderr


def test_a_digit_cuda_does_not_read_in_cuda_visible_devices_is_one_error_line(runner, replay):
    replay(IDLE, visible="¹")  # a digit to Python's str.isdigit, not to CUDA
    result = runner.invoke(app, ["gpus"])
    assert result.exit_code == 13 and "CUDA_VISIBLE_DEVICES" in _one_error_line(result)
