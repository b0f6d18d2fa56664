"""qwdeploy.vllm.cache and cache_key: the key, the directory, warm/cold, DeepGEMM and loader choices (no vLLM)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from qwdeploy import PlanRequest, plan
from qwdeploy.planning import startup
from qwdeploy.planning.plan import Pins
from qwdeploy.vllm import cache, cache_key

TINY = str(Path(__file__).parent / "fixtures" / "tiny-qwen3")


def plan_for(
    model="Qwen/Qwen3-8B",
    profile="chat",
    dtype=None,
    gpu="H100",
    mml=None,
    gmu=None,
    kv=None,
    seqs=None,
    mnbt=None,
    eager=None,
):
    pins = Pins(
        max_model_len=mml,
        gpu_memory_utilization=gmu,
        kv_cache_dtype=kv,
        max_num_seqs=seqs,
        max_num_batched_tokens=mnbt,
        enforce_eager=eager,
    )
    return plan(PlanRequest(model, dtype=dtype, profile=profile, gpu=gpu, pins=pins))


def key_of(plan, **kw):
    return cache_key.cache_key(cache_key.key_fields(plan, "0.26.0", "H100", **kw))


# ---- the key ---------------------------------------------------------------------------------


def test_gpu_memory_utilization_is_not_in_the_key():
    assert key_of(plan_for(gmu=0.80)) == key_of(plan_for(gmu=0.92))


def test_max_model_len_is_in_the_key():
    assert key_of(plan_for(mml=8192)) != key_of(plan_for(mml=16384))


@pytest.mark.parametrize(
    "pins", [dict(mnbt=4096), dict(kv="fp8"), dict(eager=True), dict(dtype="fp8"), dict(model="Qwen/Qwen3-4B")]
)
def test_each_compile_setting_changes_the_key(pins):
    assert key_of(plan_for(mml=8192)) != key_of(plan_for(mml=8192, **pins))


def test_max_num_seqs_changes_the_key_only_through_the_graph_sizes():
    # capture sizes go up to min(2 × max_num_seqs, 512, mnbt): 300 and 400 both cap at 512
    assert key_of(plan_for(mml=8192, seqs=300)) == key_of(plan_for(mml=8192, seqs=400))
    assert key_of(plan_for(mml=8192, seqs=64)) != key_of(plan_for(mml=8192, seqs=128))


def test_eager_plans_ignore_max_num_seqs():
    few, many = plan_for(mml=8192, eager=True, seqs=8), plan_for(mml=8192, eager=True, seqs=256)
    assert key_of(few) == key_of(many)


def test_vllm_version_and_device_are_in_the_key():
    p = plan_for()
    base = cache_key.cache_key(cache_key.key_fields(p, "0.26.0", "H100"))
    assert base != cache_key.cache_key(cache_key.key_fields(p, "0.27.0", "H100"))
    assert base != cache_key.cache_key(cache_key.key_fields(p, "0.26.0", "H200"))


def test_key_change_names_the_settings_that_differ():
    old, new = plan_for(mml=8192), plan_for(mml=16384, mnbt=4096)
    assert cache_key.key_change(old, new) == ["max_model_len", "max_num_batched_tokens"]


def test_key_change_is_empty_when_only_gpu_memory_utilization_moves():
    assert cache_key.key_change(plan_for(gmu=0.85), plan_for(gmu=0.92)) == []


def test_describe_change_says_keeps_or_cold():
    assert cache_key.describe_change([]).startswith("keeps the compile cache")
    assert (
        cache_key.describe_change(["max_model_len"]) == "changes max_model_len: cold compile expected on the next start"
    )


# ---- the directory -----------------------------------------------------------------------------


def test_directory_is_model_slug_and_twelve_key_characters(tmp_path):
    state = cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0")
    assert state.directory == tmp_path / "vllm" / f"qwen3-8b-{state.key[:12]}"
    assert state.directory.is_dir()


def test_env_points_vllm_and_inductor_into_the_directory(tmp_path):
    state = cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0")
    assert state.env["VLLM_CACHE_ROOT"] == str(state.directory)
    assert state.env["TORCHINDUCTOR_CACHE_DIR"] == str(state.directory / "torchinductor")


def test_default_root_follows_qwdeploy_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("QWDEPLOY_CACHE_DIR", str(tmp_path / "c"))
    assert cache.default_root() == tmp_path / "c"


def test_default_root_is_under_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.delenv("QWDEPLOY_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.default_root() == tmp_path / "qwdeploy"


# ---- warm or cold ------------------------------------------------------------------------------


def _fake_compile(state):
    f = state.directory / cache.COMPILE_DIR / "torch_aot_compile" / "abc" / "rank_0_0" / "model"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x")


def test_first_prepare_is_cold(tmp_path):
    state = cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0")
    assert not state.warm
    assert state.notes[0].startswith("Cache cold: first start")


def test_prepare_after_mark_built_with_compile_cache_is_warm(tmp_path):
    state = cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0")
    _fake_compile(state)
    cache.mark_built(state, {"import_s": 20.0, "compile_s": 40.0, "ready_s": 95.0})
    again = cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0")
    assert again.warm and again.key == state.key


def test_warm_start_expects_the_last_measured_warm_start(tmp_path):
    state = cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0")
    _fake_compile(state)
    cache.mark_built(state, {"ready_s": 114.24})  # the cold start
    warm = cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0")
    cache.mark_built(warm, {"ready_s": 48.17})  # the first warm restart
    assert cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0").expected_start_s == 48.2


def _qwen3_32b_tp2_h200():
    pins = Pins(tensor_parallel_size=2, max_model_len=32768, gpu_memory_utilization=0.9)
    return plan(PlanRequest("Qwen/Qwen3-32B", gpu="H200", num_gpus=2, pins=pins))


# (plan, cold start measured, warm restart measured): qwdeploy serve, dummy weights
# (tests/data/coldstart/h100_run2.json bf16-cold / bf16-restart; tests/data/serve_h200x2)
MEASURED_RESTARTS = [(plan_for, 114.24, 48.17), (_qwen3_32b_tp2_h200, 122.75, 48.65)]


@pytest.mark.parametrize("make_plan, cold_s, warm_s", MEASURED_RESTARTS, ids=["8B-H100", "32B-TP2-H200"])
def test_a_warm_start_after_a_cold_one_expects_less_than_the_cold_time(tmp_path, make_plan, cold_s, warm_s):
    state = cache.prepare(make_plan(), tmp_path, vllm_version="0.26.0")
    _fake_compile(state)
    cache.mark_built(state, {"ready_s": cold_s})
    expected = cache.prepare(make_plan(), tmp_path, vllm_version="0.26.0").expected_start_s
    assert expected == pytest.approx(warm_s, rel=0.15)


def test_mark_built_without_compile_cache_stays_cold(tmp_path):
    state = cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0")
    cache.mark_built(state, {"ready_s": 95.0})
    again = cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0")
    assert not again.warm and "torch.compile cache is empty" in again.notes[0]


def test_eager_plan_is_warm_without_a_compile_cache(tmp_path):
    state = cache.prepare(plan_for(eager=True), tmp_path, vllm_version="0.26.0")
    cache.mark_built(state, {"ready_s": 45.0})
    assert cache.prepare(plan_for(eager=True), tmp_path, vllm_version="0.26.0").warm


def test_other_gpu_memory_utilization_reuses_the_warm_directory(tmp_path):
    state = cache.prepare(plan_for(gmu=0.85), tmp_path, vllm_version="0.26.0")
    _fake_compile(state)
    cache.mark_built(state, {"ready_s": 95.0})
    again = cache.prepare(plan_for(gmu=0.92), tmp_path, vllm_version="0.26.0")
    assert again.warm and again.directory == state.directory


def test_startup_plan_is_off_unless_asked(tmp_path):
    assert "VLLM_ENABLE_STARTUP_PLAN" not in cache.prepare(plan_for(), tmp_path).env
    asked = cache.prepare(plan_for(), tmp_path, startup_plan=True)
    assert asked.env["VLLM_ENABLE_STARTUP_PLAN"] == "1"


def test_changed_gpu_memory_utilization_drops_vllms_startup_plan(tmp_path):
    state = cache.prepare(plan_for(gmu=0.85), tmp_path, vllm_version="0.26.0", startup_plan=True)
    saved = state.directory / "startup_plan" / "startup_plan_0123456789abcdef.json"
    saved.parent.mkdir()
    saved.write_text("{}")
    cache.mark_built(state, {"ready_s": 95.0})
    cache.prepare(plan_for(gmu=0.92), tmp_path, vllm_version="0.26.0", startup_plan=True)
    assert not saved.exists()


def test_manifest_records_key_fields_and_phases(tmp_path):
    state = cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0")
    cache.mark_built(state, {"compile_s": 41.5, "ready_s": 95.0})
    data = json.loads((state.directory / "qwdeploy-cache.json").read_text())
    assert data["key"] == state.key
    assert data["key_fields"]["max_model_len"] == state.key_fields["max_model_len"]
    assert data["last_success"]["compile_s"] == 41.5


def test_corrupt_manifest_counts_as_cold(tmp_path):
    state = cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0")
    _fake_compile(state)
    state.manifest_path.write_text("{not json")
    assert not cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0").warm


def test_cache_state_is_frozen(tmp_path):
    state = cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.warm = True


# ---- DeepGEMM --------------------------------------------------------------------------------


def test_bf16_plans_leave_deep_gemm_alone():
    assert startup.deep_gemm_warmup(plan_for()) is None


def test_fp8_low_latency_pays_the_relax_deep_gemm_warmup():
    assert startup.deep_gemm_warmup(plan_for("Qwen/Qwen3-8B-FP8", "low-latency", mml=8192)) == "relax"


def test_fp8_chat_skips_the_deep_gemm_warmup():
    assert startup.deep_gemm_warmup(plan_for("Qwen/Qwen3-8B-FP8", "chat")) == "skip"


def test_fp8_on_ada_has_no_deep_gemm():
    # DeepGEMM needs SM90+; an L40S (SM89) runs FP8 through CUTLASS
    assert startup.deep_gemm_warmup(plan_for("Qwen/Qwen3-8B-FP8", "chat", gpu="L40S")) is None


def test_fp8_eager_has_no_jit_warmup():
    assert startup.deep_gemm_warmup(plan_for("Qwen/Qwen3-8B-FP8", "chat", eager=True)) is None


def test_deep_gemm_choice_is_in_env_and_notes(tmp_path):
    state = cache.prepare(plan_for("Qwen/Qwen3-8B-FP8", "low-latency", mml=8192), tmp_path, vllm_version="0.26.0")
    assert state.env["VLLM_DEEP_GEMM_WARMUP"] == "relax"
    assert any(n.startswith("DeepGEMM (FP8 block weights): VLLM_DEEP_GEMM_WARMUP=relax") for n in state.notes)


def test_deep_gemm_kernels_are_shared_across_keys_of_one_gpu(tmp_path):
    a = cache.prepare(plan_for("Qwen/Qwen3-8B-FP8", mml=8192), tmp_path, vllm_version="0.26.0")
    b = cache.prepare(plan_for("Qwen/Qwen3-8B-FP8", mml=16384), tmp_path, vllm_version="0.26.0")
    assert a.directory != b.directory
    assert a.env["DG_JIT_CACHE_DIR"] == b.env["DG_JIT_CACHE_DIR"]


def test_deep_gemm_jit_grows_with_the_graph_sizes():
    # g03 (H100, 8B-FP8, warm-up skip, 51 sizes): profiling 20.3 s and graph capture 150 s vs
    # bf16 0.7 s and 6 s: 19.6 + 51 × 144/51 = 163.6 s, paid whatever VLLM_DEEP_GEMM_WARMUP says
    assert startup.deep_gemm_jit_s(plan_for("Qwen/Qwen3-8B-FP8", "chat", seqs=256)) == 163.6
    # 4 sequences: sizes 1, 2, 4, 8 -> 19.6 + 4 × 144/51 = 30.89
    assert startup.deep_gemm_jit_s(plan_for("Qwen/Qwen3-8B-FP8", "chat", seqs=4)) == 30.9


def test_relax_warmup_adds_vllms_prefill_shapes():
    # H100, Qwen3-8B-FP8, vLLM's default relax: 236 s over the skip estimate at mnbt 4096
    # (m_q8bfp8_lowlatency), 257 s at 8192 (fp8-vanilla: 586.6 s ready vs bf16 165.9 s)
    low = plan_for("Qwen/Qwen3-8B-FP8", "low-latency")
    assert low.max_num_batched_tokens == 4096
    skip = startup.deep_gemm_jit_s(low, "skip")
    assert startup.deep_gemm_jit_s(low, "relax") - skip == pytest.approx(236, abs=1)
    chat = plan_for("Qwen/Qwen3-8B-FP8", "chat", seqs=256)
    assert startup.deep_gemm_jit_s(chat, "relax") == pytest.approx(586.6 - 165.9, rel=0.05)


def test_bf16_has_no_deep_gemm_jit():
    assert startup.deep_gemm_jit_s(plan_for()) == 0.0


def test_empty_deep_gemm_cache_adds_the_jit_to_the_expected_start(tmp_path):
    p = plan_for("Qwen/Qwen3-8B-FP8", "chat", seqs=256)
    state = cache.prepare(p, tmp_path, vllm_version="0.26.0")
    assert state.expected_start_s == round(p.performance["predicted_cold_start_s"] + 163.6, 1)


def test_filled_deep_gemm_cache_adds_nothing(tmp_path):
    p = plan_for("Qwen/Qwen3-8B-FP8", "chat")
    first = cache.prepare(p, tmp_path, vllm_version="0.26.0")
    kernel = Path(first.env["DG_JIT_CACHE_DIR"]) / "kernel.cubin"
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(b"x")
    again = cache.prepare(p, tmp_path, vllm_version="0.26.0")
    assert again.expected_start_s == p.performance["predicted_cold_start_s"]


def test_fp8_eager_still_caches_deep_gemm_kernels(tmp_path):
    state = cache.prepare(plan_for("Qwen/Qwen3-8B-FP8", eager=True), tmp_path, vllm_version="0.26.0")
    assert "DG_JIT_CACHE_DIR" in state.env and "VLLM_DEEP_GEMM_WARMUP" not in state.env


def test_bad_deep_gemm_override_is_refused():
    with pytest.raises(ValueError):
        startup.deep_gemm_warmup(plan_for("Qwen/Qwen3-8B-FP8"), "fast")


# ---- loader ------------------------------------------------------------------------------------


def test_loader_defaults_to_safetensors_mmap():
    assert cache_key.choose_loader(plan_for(), set(), "H100")[0] == "auto"


def test_loader_prefers_fastsafetensors_when_installed():
    assert cache_key.choose_loader(plan_for(), {"fastsafetensors"}, "H100")[0] == "fastsafetensors"


def test_loader_uses_runai_streamer_when_that_is_installed():
    assert cache_key.choose_loader(plan_for(), {"runai_model_streamer"}, "H100")[0] == "runai_streamer"


def test_cpu_keeps_the_default_loader():
    assert cache_key.choose_loader(plan_for(), {"fastsafetensors"}, "cpu")[0] == "auto"


# ---- local models ------------------------------------------------------------------------------


def test_local_model_key_uses_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(TINY).parent.parent.parent)
    rel = cache_key.key_fields(plan_for("tests/fixtures/tiny-qwen3"), "0.32.0", "cpu")
    absolute = cache_key.key_fields(plan_for(TINY), "0.32.0", "cpu")
    assert rel["model"] == absolute["model"] == str(Path(TINY).resolve())


# ---- engine start method ----------------------------------------------------------------------


def test_gpu_starts_fork_the_engine_instead_of_importing_vllm_twice(tmp_path):
    # H100, 8B bf16 through the API server: spawn 124.7 s cold / 71.2 s restart, fork 114.2 / 48.2
    # (bench/results/coldstart_gpu): the spawned EngineCore re-imported vLLM for 20-27 s
    state = cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0", device="H100")
    assert state.env["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"


def test_cpu_starts_leave_the_start_method_to_vllm(tmp_path):
    state = cache.prepare(plan_for(), tmp_path, vllm_version="0.26.0", device="cpu")
    assert "VLLM_WORKER_MULTIPROC_METHOD" not in state.env
