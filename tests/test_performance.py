"""Throughput and start-time predictions against what real vLLM 0.26 measured (H100; 2 × H200 at TP 2)."""

import json
from pathlib import Path

import pytest
from vllm_runs import load_runs, run_request

from qwdeploy import PlanRequest, plan
from qwdeploy.planning import performance, startup

ROOT = Path(__file__).resolve().parent.parent

RUNS = load_runs()


def _plan(run):
    return plan(run_request(run))


def _decode_cases():
    for run in RUNS:
        if run.get("decode_batch1_tok_per_s"):
            yield pytest.param(run, 1, 16, 512, run["decode_batch1_tok_per_s"], id=f"{run['run']}-b1")
        for key, item in (run.get("throughput") or {}).items():
            if key.startswith("decode_b"):
                yield pytest.param(
                    run,
                    item["batch"],
                    item["in_len"],
                    item["out_len"],
                    item["out_tok_per_s"],
                    id=f"{run['run']}-b{item['batch']}",
                )


@pytest.mark.parametrize("run,batch,prompt,output,measured", list(_decode_cases()))
def test_decode_tokens_per_s_within_15_percent_of_vllm(run, batch, prompt, output, measured):
    predicted = performance.benchmark_tokens_per_s(_plan(run), batch, prompt, output)
    assert predicted == pytest.approx(measured, rel=0.15)


@pytest.mark.parametrize(
    "run", [r for r in RUNS if (r.get("throughput") or {}).get("prefill_16x1024")], ids=lambda r: r["run"]
)
def test_prefill_tokens_per_s_within_15_percent_of_vllm(run):
    measured = run["throughput"]["prefill_16x1024"]["prefill_tok_per_s"]
    assert performance.prefill_tokens_per_s(_plan(run)) == pytest.approx(measured, rel=0.15)


# Known misses of the start model, kept visible: both starts ran slower than it predicts.
START_MISSES = {
    # first LLM-class start after the cold-start series on that machine (fresh VLLM_CACHE_ROOT):
    # 24 s resolving the architecture in a subprocess and 20 s of sampler JIT after graph
    # capture, which the model does not count (tests/data/vllm_runs/h100/m_q8bawq_agent.log)
    "m_q8bawq_agent": "first start of a fresh vLLM cache root: model inspection + sampler JIT",
    # VLLM_USE_DEEP_GEMM=0 (a harness choice, not a plan's): CUTLASS block-FP8 compiles in 76 s
    # where the model says 40 s
    "m_q4bfp8_throughput": "CUTLASS block-FP8 path compiles ~2x slower than the model's compile time",
    # 2 × H200, seventh case on one vLLM cache root: cold torch.compile (45 s), but the set-up
    # every earlier case paid (Triton kernels, sampler) was cached: ready in 94.5 s, 32 s under
    "t08_q32b_yarn131072": "cold compile on a shared, already-filled vLLM cache root: faster set-up",
}


def _start_cases():
    for run in RUNS:
        if run.get("proc_start_to_ready_s") and not run.get("refused") and not run.get("timed_out"):
            reason = START_MISSES.get(run["run"])
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            yield pytest.param(run, id=run["run"], marks=marks)


@pytest.mark.parametrize("run", list(_start_cases()))
def test_start_seconds_within_25_percent_of_vllm(run):
    phases = startup.cold_start_s(_plan(run), weights_from_disk=False)  # the runs use dummy weights
    if (run.get("env_overrides") or {}).get("VLLM_USE_DEEP_GEMM") == "0":
        phases["deep_gemm_jit_cold_s"] = 0.0  # the run switched DeepGEMM off (CUTLASS FP8 kernels)
    llm_class_caches = not run.get("shared_cache_root")  # a shared cache root keeps the sampler JIT
    predicted = startup.start_seconds(phases, warm=bool(run.get("warm_compile_cache")), via_llm_class=llm_class_caches)
    assert predicted == pytest.approx(run["proc_start_to_ready_s"], rel=0.25)


# ---- qwdeploy's own starts on the H100 (bench/results/coldstart_gpu.md) -----------------------

COLDSTART = json.loads((ROOT / "tests" / "data" / "coldstart" / "h100_run2.json").read_text())
SERVE_CASES = {  # case: (repo, warm cache?)
    "bf16-cold": ("Qwen/Qwen3-8B", False),
    "bf16-restart": ("Qwen/Qwen3-8B", True),
    "fp8-chat-cold": ("Qwen/Qwen3-8B-FP8", False),
    "fp8-chat-restart": ("Qwen/Qwen3-8B-FP8", True),
}
SERVE_MISSES = {
    # FP8 restarts load and compile slower than bf16 (weights 6.7 s, compile from cache 13.3 s,
    # import 30.6 s in its log); the model gives FP8 the bf16 warm costs
    "fp8-chat-restart": "FP8 warm restart: slower load and cached compile than the model's bf16 costs",
}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=[pytest.mark.xfail(reason=SERVE_MISSES[c], strict=True)] if c in SERVE_MISSES else [])
        for c in SERVE_CASES
    ],
)
def test_serve_start_seconds_within_25_percent_of_the_h100(case):
    repo, warm = SERVE_CASES[case]
    p = plan(PlanRequest(repo, gpu="H100"))
    phases = startup.cold_start_s(p, weights_from_disk=False)  # dummy weights there too
    measured = COLDSTART[case]["phases"]["ready_s"]
    assert startup.start_seconds(phases, warm=warm) == pytest.approx(measured, rel=0.25)
