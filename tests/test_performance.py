"""Throughput and start-time predictions against what real vLLM 0.26 measured on the H100."""

import pytest
from vllm_runs import load_runs

from qwdeploy import catalog, hardware, performance, planner, profiles

RUNS = load_runs()


def _plan(run):
    pins = planner.Pins(max_model_len=run["max_model_len"], gpu_memory_utilization=run["gpu_memory_utilization"],
                        max_num_seqs=run["max_num_seqs"], max_num_batched_tokens=run["max_num_batched_tokens"],
                        enforce_eager=bool(run.get("enforce_eager")))
    return planner.plan([catalog.get(run["repo_id"])], profiles.load(run.get("profile") or "chat"),
                        hardware.named("H100", 1), pins)


def _decode_cases():
    for run in RUNS:
        if run.get("decode_batch1_tok_per_s"):
            yield pytest.param(run, 1, 16, 512, run["decode_batch1_tok_per_s"], id=f"{run['run']}-b1")
        for key, item in (run.get("throughput") or {}).items():
            if key.startswith("decode_b"):
                yield pytest.param(run, item["batch"], item["in_len"], item["out_len"], item["out_tok_per_s"],
                                   id=f"{run['run']}-b{item['batch']}")


@pytest.mark.parametrize("run,batch,prompt,output,measured", list(_decode_cases()))
def test_decode_tokens_per_s_within_15_percent_of_vllm(run, batch, prompt, output, measured):
    predicted = performance.benchmark_tokens_per_s(_plan(run), batch, prompt, output)
    assert predicted == pytest.approx(measured, rel=0.15)


@pytest.mark.parametrize("run", [r for r in RUNS if (r.get("throughput") or {}).get("prefill_16x1024")],
                         ids=lambda r: r["run"])
def test_prefill_tokens_per_s_within_15_percent_of_vllm(run):
    measured = run["throughput"]["prefill_16x1024"]["prefill_tok_per_s"]
    assert performance.prefill_tokens_per_s(_plan(run)) == pytest.approx(measured, rel=0.15)


# Known misses of the start model, kept visible: both starts ran slower than it predicts.
START_MISSES = {
    # first LLM-class start after the cold-start series on that machine (fresh VLLM_CACHE_ROOT):
    # 24 s resolving the architecture in a subprocess and 20 s of sampler JIT after graph
    # capture, which the model does not count (bench/results/raw/m_q8bawq_agent.log)
    "m_q8bawq_agent": "first start of a fresh vLLM cache root: model inspection + sampler JIT",
    # VLLM_USE_DEEP_GEMM=0 (a harness choice, not a plan's): CUTLASS block-FP8 compiles in 76 s
    # where the model says 40 s
    "m_q4bfp8_throughput": "CUTLASS block-FP8 path compiles ~2x slower than the model's compile time",
}


def _start_cases():
    for run in RUNS:
        if run.get("proc_start_to_ready_s") and not run.get("refused") and not run.get("timed_out"):
            reason = START_MISSES.get(run["run"])
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            yield pytest.param(run, id=run["run"], marks=marks)


@pytest.mark.parametrize("run", list(_start_cases()))
def test_start_seconds_within_25_percent_of_vllm(run):
    phases = performance.cold_start_s(_plan(run), weights_from_disk=False)  # the runs use dummy weights
    if (run.get("env_overrides") or {}).get("VLLM_USE_DEEP_GEMM") == "0":
        phases["deep_gemm_jit_cold_s"] = 0.0  # the run switched DeepGEMM off (CUTLASS FP8 kernels)
    predicted = performance.start_seconds(phases, warm=bool(run.get("warm_compile_cache")))
    assert predicted == pytest.approx(run["proc_start_to_ready_s"], rel=0.25)
