"""Throughput and start-time predictions: a roofline over the bytes and FLOPs of each step.

Decode is memory-bound: every step reads this rank's weights (for MoE, the experts the batch
touches) and the KV cache of every running sequence. Prefill is compute-bound. Efficiency
factors are measured with real vLLM 0.26 on an H100 (runs cited beside each constant).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from qwdeploy import memory

GB = 1e9


@dataclass(frozen=True)
class Efficiency:
    """Efficiency factors, fitted on real vLLM 0.26 decode/prefill on an H100 (bench/results)."""

    # A decode step = bytes / (bandwidth × efficiency) + layers × per_layer + batch × per_seq.
    # Qwen3-8B and 14B bf16 at batch 1 (146.8 and 86.0 tok/s) fix the bf16 efficiency (0.83 of
    # 3.35 TB/s) and 25.9 us per layer; 8B and 14B at batch 64 (7,009 and 4,320 tok/s, prefill
    # included) fix 12 us per running sequence.
    decode_bandwidth: float = 0.8326
    step_per_layer_s: float = 25.9e-6
    step_per_seq_s: float = 12e-6
    # int4 (Machete/Marlin) dequantizes on the fly: 32B-AWQ at batch 1, 78.4 tok/s -> 0.537.
    decode_bandwidth_int4: float = 0.537
    # FP8 block GEMMs: Qwen3-8B-FP8 at batch 1, 187.7 tok/s (m_q8bfp8_lowlatency) -> 0.65.
    decode_bandwidth_fp8: float = 0.65
    # Qwen3-MoE adds routing and the fused-experts kernels to every layer: 30B-A3B at batch 1,
    # 195.2 tok/s (m_q30ba3b_throughput) -> 30 us a layer on top of step_per_layer_s.
    moe_step_per_layer_s: float = 30e-6
    # TP all-reduce, two per layer (custom all-reduce over NVLink): an estimate, unmeasured.
    allreduce_s: float = 10e-6
    # Eager decode of Qwen3-8B: 37.0 tok/s vs 146.8 with graphs (launch-bound): 4x slower.
    eager_slowdown: float = 146.8 / 37.0
    # Prefill matmul efficiency: Qwen3-14B, 16 × 1024-token prompts in 0.70 s = 23,416 tok/s,
    # 0.70 of 989 dense bf16 TFLOP/s. int4 prefill is slower: an estimate.
    prefill_compute: float = 0.70
    prefill_compute_int4: float = 0.50
    # Cold start pieces, from the H100 runs (groundtruth 01-13): `import vllm` ~20 s; engine
    # set-up, profiling and KV allocation ~20 s plus 0.75 s per GiB of weights even with dummy
    # weights (ready minus init: 8B 29 s, 32B 57 s; init minus compile and graphs: 21 s, 28 s);
    # torch.compile cold 15 s + 0.7 s a layer (8B: 38.6 s, 32B: 61.6 s), warm ~8 s; graph
    # capture ~3.3 ms per layer and capture size (8B, 51 sizes: 6 s; 32B: 14 s).
    import_s: float = 20.0
    engine_setup_s: float = 20.0
    engine_setup_s_per_gib: float = 0.75
    # A warm restart through `qwdeploy serve` (API server, forked engine, the plan's own cache
    # root with its Triton and model-info caches) skips the fixed part: Qwen3-8B ready in 48.2 s
    # = import 20 + 0.75 × 15.3 GiB + dummy load 2.5 + compile 8 + capture 6.1
    # (bench/results/coldstart_gpu). Starts through vLLM's LLM class with vLLM's default caches
    # JIT the sampler again after graph capture (g16: 22 s).
    llm_class_sampler_jit_s: float = 20.0
    # Eager starts skip most of that set-up (no compiled warm-up): 8B eager ready in 45 s,
    # 14B eager in 36 s (g11), import included.
    eager_setup_s: float = 12.0
    compile_cold_base_s: float = 15.0
    compile_cold_s_per_layer: float = 0.7
    compile_warm_s: float = 8.0
    graph_capture_s_per_layer_size: float = 0.0033
    # Reading safetensors from a local NVMe disk (a stated assumption; serve reports the real one).
    disk_bandwidth_gbps: float = 2.0
    # load_format=dummy (the validation runs): random init on the GPU, ~2.5 s.
    dummy_load_s: float = 2.5


EFFICIENCY = Efficiency()


def _active_weight_bytes(plan, batch: int) -> float:
    """Weight bytes one decode step reads on one GPU (of the stage that holds the most)."""
    s = plan.variant.spec
    total = plan.memory.weights_bytes
    if not s.is_moe:
        return total
    tp = plan.tensor_parallel_size
    experts = memory.layer_weight_bytes(plan.variant, tp) - memory.layer_weight_bytes(_no_experts(plan.variant), tp)
    per_expert_layer = experts / s.num_experts
    touched = s.num_experts * (1 - (1 - s.num_experts_per_tok / s.num_experts) ** batch)
    untouched = (s.num_experts - touched) * per_expert_layer * plan.layers_per_gpu
    return max(total - untouched, 0.0)


def _no_experts(variant):
    return replace(variant, spec=replace(variant.spec, num_experts=0, intermediate_size=0))


def _active_params(plan) -> float:
    s = plan.variant.spec
    p = memory.parameter_count(plan.variant)
    if s.is_moe:
        unused = (s.num_experts - s.num_experts_per_tok) * 3 * s.hidden_size * s.moe_intermediate_size
        p -= unused * s.num_hidden_layers
    return p


def _bandwidth(plan, eff: Efficiency) -> float:
    q = plan.quantization
    factor = (
        eff.decode_bandwidth if q is None else eff.decode_bandwidth_fp8 if q == "fp8" else eff.decode_bandwidth_int4
    )
    return plan.gpu.spec.memory_bandwidth_gbps * GB * factor


def _peak_flops(plan, eff: Efficiency) -> float:
    spec = plan.gpu.spec
    fp8 = plan.quantization == "fp8" and spec.fp8_tflops
    peak = (spec.fp8_tflops if fp8 else spec.bf16_tflops) * 1e12
    return peak * (eff.prefill_compute if plan.quantization in (None, "fp8") else eff.prefill_compute_int4)


def step_seconds(plan, batch: int, context: int, eff: Efficiency = EFFICIENCY) -> float | None:
    """One decode step of `batch` sequences holding `context` tokens each, on one stage."""
    if not plan.gpu.spec.memory_bandwidth_gbps:
        return None
    layers = plan.layers_per_gpu
    kv_per_token = memory.kv_bytes_per_token(plan.variant.spec, plan.kv_cache_dtype, plan.tensor_parallel_size, layers)
    step_bytes = _active_weight_bytes(plan, batch) + batch * context * kv_per_token
    stage_share = layers / plan.variant.spec.num_hidden_layers
    flops = 2 * _active_params(plan) * batch * stage_share / plan.tensor_parallel_size
    step = max(step_bytes / _bandwidth(plan, eff), flops / _peak_flops(plan, eff))
    per_layer = eff.step_per_layer_s + (eff.moe_step_per_layer_s if plan.variant.spec.is_moe else 0.0)
    step += layers * per_layer + batch * eff.step_per_seq_s
    if plan.tensor_parallel_size > 1:
        step += 2 * layers * eff.allreduce_s
    if plan.enforce_eager:
        step *= eff.eager_slowdown
    return step


def decode_tokens_per_s(plan, batch: int, context: int, eff: Efficiency = EFFICIENCY) -> float | None:
    """Steady decode rate of `batch` sequences (pipeline stages overlap once batch > 1)."""
    step = step_seconds(plan, batch, context, eff)
    if step is None:
        return None
    if batch == 1:
        step *= plan.pipeline_parallel_size  # one sequence passes every stage in turn
    return batch / step


def prefill_tokens_per_s(plan, eff: Efficiency = EFFICIENCY) -> float | None:
    if not plan.gpu.spec.bf16_tflops:
        return None
    flops_per_token = 2 * _active_params(plan) / plan.tensor_parallel_size / plan.pipeline_parallel_size
    return _peak_flops(plan, eff) / flops_per_token


def benchmark_tokens_per_s(plan, batch: int, prompt: int, output: int, eff: Efficiency = EFFICIENCY) -> float | None:
    """Output tokens/s of `batch` requests of `prompt` + `output` tokens started together
    (prefill included), the way the validation harness measures decode."""
    pre = prefill_tokens_per_s(plan, eff)
    if pre is None:
        return None
    total = batch * prompt / pre
    for i in range(0, output, 16):  # the context grows as the sequences decode
        step = step_seconds(plan, batch, prompt + i + 8, eff)
        total += step * min(16, output - i) * (plan.pipeline_parallel_size if batch == 1 else 1)
    return batch * output / total


def cold_start_s(plan, eff: Efficiency = EFFICIENCY, weights_from_disk: bool = True) -> dict:
    """Seconds of each phase from process start to ready, cold and warm compile cache."""
    layers = plan.variant.spec.num_hidden_layers
    total_weight_bytes = plan.memory.weights_bytes * plan.tensor_parallel_size
    load = total_weight_bytes / (eff.disk_bandwidth_gbps * GB) if weights_from_disk else eff.dummy_load_s
    eager = plan.enforce_eager
    sizes = len(memory.cudagraph_capture_sizes(plan.max_num_seqs, plan.max_num_batched_tokens))
    setup = (
        eff.eager_setup_s if eager else eff.engine_setup_s + eff.engine_setup_s_per_gib * total_weight_bytes / (1 << 30)
    )
    compile_cold = eff.compile_cold_base_s + eff.compile_cold_s_per_layer * layers
    return {
        "import_s": eff.import_s,
        "engine_setup_s": round(setup, 1),
        "engine_setup_warm_s": round(setup if eager else setup - eff.engine_setup_s, 1),
        "load_weights_s": round(load, 1),
        "compile_cold_s": 0.0 if eager else round(compile_cold, 1),
        "compile_warm_s": 0.0 if eager else eff.compile_warm_s,
        "graph_capture_s": 0.0 if eager else round(eff.graph_capture_s_per_layer_size * layers * sizes, 1),
        "deep_gemm_jit_cold_s": round(_deep_gemm_jit_s(plan), 1),
        "disk_bandwidth_gbps_assumed": eff.disk_bandwidth_gbps if weights_from_disk else None,
    }


def _deep_gemm_jit_s(plan) -> float:
    from qwdeploy import cache  # light: no vLLM, no torch

    return cache.deep_gemm_jit_s(plan)


def start_seconds(phases: dict, warm: bool, via_llm_class: bool = False, eff: Efficiency = EFFICIENCY) -> float:
    """Seconds to ready from `cold_start_s` phases; `via_llm_class`: vLLM's LLM class with its
    default caches (the validation harness) instead of qwdeploy's server start."""
    parts = ("import_s", "load_weights_s", "graph_capture_s")
    if warm:
        parts += ("engine_setup_warm_s", "compile_warm_s")
    else:
        parts += ("engine_setup_s", "compile_cold_s", "deep_gemm_jit_cold_s")
    extra = eff.llm_class_sampler_jit_s if warm and via_llm_class and phases.get("compile_warm_s") else 0.0
    return round(sum(phases.get(p, 0.0) for p in parts) + extra, 1)


def attach(plan):
    """The plan with its `performance` predictions filled in."""
    prof = plan.profile
    context = min(plan.max_model_len, prof.typical_prompt_tokens + prof.typical_output_tokens // 2)
    concurrent = max(1, min(plan.max_num_seqs, int(plan.capacity.tokens // max(context, 1))))
    d1 = decode_tokens_per_s(plan, 1, context)
    dn = decode_tokens_per_s(plan, concurrent, context)
    pre = prefill_tokens_per_s(plan)
    ttft = (prof.typical_prompt_tokens / pre + 1 / d1) if pre and d1 else None
    start = cold_start_s(plan)
    cold, warm = start_seconds(start, warm=False), start_seconds(start, warm=True)
    from qwdeploy import cache

    perf = {
        "deep_gemm_warmup": cache.deep_gemm_warmup(plan),
        "predicted_decode_tokens_per_s_batch1": round(d1, 1) if d1 else None,
        "predicted_decode_concurrency": concurrent,
        "predicted_decode_tokens_per_s_concurrent": round(dn, 1) if dn else None,
        "predicted_prefill_tokens_per_s": round(pre) if pre else None,
        "predicted_ttft_s": round(ttft, 3) if ttft else None,
        "predicted_cold_start_s": round(cold, 1),
        "predicted_warm_start_s": round(warm, 1),
        "cold_start_phases_s": start,
        "context_tokens": context,
    }
    return replace(plan, performance=perf)
