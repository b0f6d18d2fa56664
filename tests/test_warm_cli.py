"""`qwdeploy warm` without starting vLLM: usage errors, plans that do not fit, a warm cache."""

from __future__ import annotations

import json
from pathlib import Path

from qwdeploy import cache
from qwdeploy.cli import app, make_plan

TINY = str(Path(__file__).parent / "fixtures" / "tiny-qwen3")
PINS = ["--gpu", "H100", "--max-model-len", "1024", "--max-num-seqs", "4",
        "--max-num-batched-tokens", "1024"]


def _warm_cache(root: Path) -> cache.CacheState:
    """A cache that a previous start left warm (manifest + compile artefact)."""
    plan = make_plan(TINY, None, "chat", "H100", None, None, 1024, None, None, 4, 1024, None)
    state = cache.prepare(plan, root, device=cache.detect_device(plan))
    artefact = state.directory / cache.COMPILE_DIR / "torch_aot_compile" / "h" / "rank_0_0" / "m"
    artefact.parent.mkdir(parents=True)
    artefact.write_bytes(b"x")
    cache.mark_built(state, {"ready_s": 31.9})
    return state


def test_unknown_deep_gemm_mode_is_a_usage_error(runner, tmp_path):
    out = runner.invoke(app, ["warm", TINY, *PINS, "--cache-dir", str(tmp_path),
                              "--deep-gemm-warmup", "fast"])
    assert out.exit_code == 2 and "not a vLLM mode" in out.stderr


def test_plan_that_does_not_fit_warms_nothing(runner, tmp_path):
    out = runner.invoke(app, ["warm", "Qwen/Qwen3-32B", "--gpu", "L4",
                              "--cache-dir", str(tmp_path)])
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
