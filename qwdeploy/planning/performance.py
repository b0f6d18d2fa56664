"""Throughput predictions: a roofline over the bytes and FLOPs of each step. Pure.

Decode is memory-bound: every step reads this rank's weights (for MoE, the experts the batch
touches) and the KV cache of every running sequence. Prefill is compute-bound. Efficiency
factors are measured with real vLLM 0.26 on an H100 (runs cited beside each constant).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from qwdeploy.planning import startup
from qwdeploy.planning.kv import kv_bytes_per_token
from qwdeploy.planning.plan import Plan
from qwdeploy.planning.weights import layer_weight_bytes, parameter_count
from qwdeploy.units import GB


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
    # TP all-reduce, two per layer: a latency per call plus the tokens' hidden states over a
    # bandwidth. Decode all-reduces (<= 8 MiB) take vLLM's custom all-reduce, prefill chunks NCCL.
    # Fitted on 2 × H200 (NV18) at TP 2, decode at batch 1/64/256 and prefill of Qwen3-8B and 32B
    # (bench/results/h200x2): 10 us and 200 GB/s put every decode within 8.5 %.
    allreduce_s: float = 10e-6
    allreduce_bytes_per_s: float = 200e9
    # Eager decode of Qwen3-8B: 37.0 tok/s vs 146.8 with graphs (launch-bound): 4x slower.
    eager_slowdown: float = 146.8 / 37.0
    # Prefill matmul efficiency: Qwen3-14B, 16 × 1024-token prompts in 0.70 s = 23,416 tok/s,
    # 0.70 of 989 dense bf16 TFLOP/s. int4 prefill is slower: an estimate.
    prefill_compute: float = 0.70
    prefill_compute_int4: float = 0.50
    # Qwen3-MoE's fused experts run far below the dense matmul rate: 30B-A3B at TP 2 on 2 × H200,
    # 16 × 1024 tokens at 67,403 tok/s, less the all-reduce term, is 0.263 of peak (one run).
    prefill_compute_moe: float = 0.263


EFFICIENCY = Efficiency()


def _active_weight_bytes(plan: Plan, batch: int) -> float:
    """Weight bytes one decode step reads on one GPU (of the stage that holds the most)."""
    s = plan.variant.spec
    total = plan.memory.weights_bytes
    if not s.is_moe:
        return total
    tp = plan.tensor_parallel_size
    experts = layer_weight_bytes(plan.variant, tp, plan.gpu.spec.compute_capability, experts_only=True)
    per_expert_layer = experts / s.num_experts
    touched = s.num_experts * (1 - (1 - s.num_experts_per_tok / s.num_experts) ** batch)
    untouched = (s.num_experts - touched) * per_expert_layer * plan.layers_per_gpu
    return max(total - untouched, 0.0)


def _active_params(plan: Plan) -> float:
    s = plan.variant.spec
    p = parameter_count(plan.variant)
    if s.is_moe:
        unused = (s.num_experts - s.num_experts_per_tok) * 3 * s.hidden_size * s.moe_intermediate_size
        p -= unused * s.num_hidden_layers
    return p


def _bandwidth(plan: Plan, eff: Efficiency) -> float:
    q = plan.variant.weight_dtype
    factor = (
        eff.decode_bandwidth_fp8
        if q == "fp8"
        else eff.decode_bandwidth_int4
        if q.startswith("int")
        else eff.decode_bandwidth
    )
    return plan.gpu.spec.memory_bandwidth_gbps * GB * factor


def _peak_flops(plan: Plan, eff: Efficiency) -> float:
    spec = plan.gpu.spec
    fp8 = plan.variant.weight_dtype == "fp8" and spec.fp8_tflops
    peak = (spec.fp8_tflops if fp8 else spec.bf16_tflops) * 1e12
    if plan.variant.spec.is_moe:
        return peak * eff.prefill_compute_moe
    return peak * (eff.prefill_compute_int4 if plan.variant.weight_dtype.startswith("int") else eff.prefill_compute)


def step_seconds(plan: Plan, batch: int, context: int, eff: Efficiency = EFFICIENCY) -> float | None:
    """One decode step of `batch` sequences holding `context` tokens each, on one stage."""
    if not plan.gpu.spec.memory_bandwidth_gbps:
        return None
    layers = plan.layers_per_gpu
    kv_per_token = kv_bytes_per_token(plan.variant.spec, plan.kv_cache_dtype, plan.tensor_parallel_size, layers)
    step_bytes = _active_weight_bytes(plan, batch) + batch * context * kv_per_token
    stage_share = layers / plan.variant.spec.num_hidden_layers
    flops = 2 * _active_params(plan) * batch * stage_share / plan.tensor_parallel_size
    step = max(step_bytes / _bandwidth(plan, eff), flops / _peak_flops(plan, eff))
    per_layer = eff.step_per_layer_s + (eff.moe_step_per_layer_s if plan.variant.spec.is_moe else 0.0)
    step += layers * per_layer + batch * eff.step_per_seq_s
    step += allreduce_seconds(plan, batch, layers, eff)
    if plan.enforce_eager:
        step *= eff.eager_slowdown
    return step


def decode_tokens_per_s(plan: Plan, batch: int, context: int, eff: Efficiency = EFFICIENCY) -> float | None:
    """Steady decode rate of `batch` sequences (pipeline stages overlap once batch > 1)."""
    step = step_seconds(plan, batch, context, eff)
    if step is None:
        return None
    if batch == 1:
        step *= plan.pipeline_parallel_size  # one sequence passes every stage in turn
    return batch / step


def allreduce_seconds(plan: Plan, tokens: int, layers: int, eff: Efficiency = EFFICIENCY) -> float:
    """The tensor-parallel all-reduces of one step over `tokens` tokens: two a layer."""
    if plan.tensor_parallel_size == 1:
        return 0.0
    hidden_bytes = tokens * plan.variant.spec.hidden_size * 2
    return 2 * layers * (eff.allreduce_s + hidden_bytes / eff.allreduce_bytes_per_s)


def prefill_tokens_per_s(plan: Plan, eff: Efficiency = EFFICIENCY) -> float | None:
    if not plan.gpu.spec.bf16_tflops:
        return None
    flops_per_token = 2 * _active_params(plan) / plan.tensor_parallel_size / plan.pipeline_parallel_size
    per_token = flops_per_token / _peak_flops(plan, eff)
    per_token += allreduce_seconds(plan, 1, plan.layers_per_gpu, replace(eff, allreduce_s=0.0))
    return 1 / per_token


def benchmark_tokens_per_s(
    plan: Plan, batch: int, prompt: int, output: int, eff: Efficiency = EFFICIENCY
) -> float | None:
    """Output tokens/s of `batch` requests of `prompt` + `output` tokens started together
    (prefill included), the way the validation harness measures decode."""
    pre = prefill_tokens_per_s(plan, eff)
    if pre is None:
        return None
    total = batch * prompt / pre
    for i in range(0, output, 16):  # the context grows as the sequences decode
        step = step_seconds(plan, batch, prompt + i + 8, eff)
        if step is None:
            return None
        total += step * min(16, output - i) * (plan.pipeline_parallel_size if batch == 1 else 1)
    return batch * output / total


def attach(plan: Plan) -> Plan:
    """The plan with its `performance` predictions filled in."""
    prof = plan.profile
    context = min(plan.max_model_len, prof.typical_prompt_tokens + prof.typical_output_tokens // 2)
    concurrent = max(1, min(plan.max_num_seqs, int(plan.capacity.tokens // max(context, 1))))
    d1 = decode_tokens_per_s(plan, 1, context)
    dn = decode_tokens_per_s(plan, concurrent, context)
    pre = prefill_tokens_per_s(plan)
    ttft = (prof.typical_prompt_tokens / pre + 1 / d1) if pre and d1 else None
    start = startup.cold_start_s(plan)
    cold, warm = startup.start_seconds(start, warm=False), startup.start_seconds(start, warm=True)
    perf = {
        "deep_gemm_warmup": startup.deep_gemm_warmup(plan),
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
