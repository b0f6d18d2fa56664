"""Byte arithmetic of a vLLM (V1 engine) deployment, per GPU. Pure functions, no I/O.

Target: vLLM 0.26 (VLLM_VERSION). How vLLM sizes the KV cache there, per TP rank:

    requested = ceil(total × gpu_memory_utilization)       # must be free when vLLM starts
    kv_cache  = requested − weights − peak_activation − non_torch
    blocks    = kv_cache // (page_bytes × layers)           # page: 16 tokens of one layer
    tokens    = int(blocks / ceil(max_model_len / 16) × max_model_len)

CUDA-graph memory is NOT taken from `requested` in 0.26 (its V2 model runner reports 0 for the
graph estimate); it is allocated on top, so it matters for what must be free, not for KV.

Calibration constants (the `Calibration` defaults) come from real vLLM 0.26.0 runs on an
H100 80GB (tests/data/vllm_runs/ and bench/results/raw/); each says which runs fixed it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from qwdeploy.catalog import ModelSpec, Variant

VLLM_VERSION = "0.26.0"
GiB = 1 << 30
MiB = 1 << 20
BLOCK_SIZE = 16  # vLLM's default block size for FlashAttention/FlashInfer on CUDA
VOCAB_PADDING = 64  # VocabParallelEmbedding pads the vocab to a multiple of 64

KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16")


@dataclass(frozen=True)
class Calibration:
    """Overheads measured on real vLLM; everything else in this module is exact arithmetic."""

    # Peak activation of vLLM's profile run: one forward over max_num_batched_tokens tokens.
    # Bytes per token: act_i × (intermediate per rank) + act_h × hidden + act_c.
    # Fitted on H100 runs of Qwen3-4B/8B/32B (mnbt 16384) and the bench/results/raw runs.
    act_i: float = 6.72
    act_h: float = 2.88
    act_c: float = 9175.0
    # Sampler pass of the profile run: min(max_num_seqs, mnbt) rows of vocab-wide logits.
    # Upper bound from Qwen3-4B (1024 rows peaked at 1.25 GiB with the hidden states alive).
    sampler_bytes_per_logit: float = 8.0
    # --enforce-eager runs the model uncompiled: 8B peak 1.66 GiB vs 1.58 compiled.
    eager_activation_factor: float = 1.05
    # Non-torch memory allocated after vLLM's start snapshot (cuBLAS workspaces, attention
    # buffers): 0.22 GiB in every TP=1 H100 run. TP>1 adds NCCL / custom all-reduce buffers:
    # an estimate (no multi-GPU run measured yet).
    non_torch_bytes: int = int(0.22 * GiB)
    non_torch_tp_extra_bytes: int = int(0.40 * GiB)
    # The CUDA context vLLM creates before it reads free memory: 79.18 − 78.66 GiB on H100.
    cuda_context_bytes: int = int(0.52 * GiB)
    # CUDA-graph pool, per layer: graph_per_size × capture sizes + graph_per_seq × max_num_seqs.
    # Fitted on Qwen3-8B at max_num_seqs 64/256/1024 (0.23/0.61/1.01 GiB); 32B (64 layers)
    # took 1.88 GiB, 4B 1.00 GiB.
    graph_per_size_per_layer: float = 2.596e-4 * GiB
    graph_per_seq_per_layer: float = 1.4468e-5 * GiB


CALIBRATION = Calibration()


# --------------------------------------------------------------------------------------------
# Tensor parallelism: which sizes vLLM accepts for a checkpoint


def tp_problem(variant: Variant, tp: int) -> str | None:
    """Why vLLM would refuse this tensor_parallel_size, or None when it accepts it."""
    s = variant.spec
    if tp < 1:
        return "tensor_parallel_size must be at least 1"
    if s.num_attention_heads % tp:
        return f"{s.num_attention_heads} attention heads are not divisible by TP {tp}"
    kvh = s.num_key_value_heads
    if (kvh >= tp and kvh % tp) or (kvh < tp and tp % kvh):
        return f"{kvh} KV heads can be neither split nor replicated evenly across TP {tp}"
    if _padded_vocab(s) % tp:
        return f"the vocabulary ({s.vocab_size}) is not divisible by TP {tp}"
    q = s.quantization
    if q is None:
        return None
    inter = s.moe_intermediate_size if s.is_moe else s.intermediate_size
    shard = inter // tp
    if inter % tp:
        return f"intermediate size {inter} is not divisible by TP {tp}"
    if q.method == "fp8" and shard % q.group_size:
        return (f"FP8 block-{q.group_size} weights: the gate/up shard {shard} is not a multiple "
                f"of {q.group_size} at TP {tp} (vLLM: 'not divisible by weight quantization "
                f"block_n'); use a smaller TP or expert parallelism")
    if q.method in ("awq", "gptq") and (shard % 128 or shard % q.group_size):
        return (f"Marlin int{q.bits} kernels need the down_proj input shard ({shard}) to be a "
                f"multiple of 128 and of the group size at TP {tp}")
    return None


def valid_tp_sizes(variant: Variant, max_tp: int) -> list[int]:
    return [tp for tp in range(1, max_tp + 1) if tp_problem(variant, tp) is None]


def _padded_vocab(s: ModelSpec) -> int:
    return math.ceil(s.vocab_size / VOCAB_PADDING) * VOCAB_PADDING


def kv_heads_per_rank(s: ModelSpec, tp: int) -> int:
    """KV heads split across TP ranks; when TP exceeds them each rank keeps one (replicated)."""
    return max(1, s.num_key_value_heads // tp)


# --------------------------------------------------------------------------------------------
# Weights


def _linear_bytes(out_features: int, in_features: int, variant: Variant, name: str) -> int:
    """Bytes of one linear layer's weight (+ scales/zeros) as vLLM holds it on the GPU."""
    q = variant.spec.quantization
    if q is None:
        return out_features * in_features * 2
    if q.method == "fp8":
        # float8_e4m3fn weight + float32 weight_scale_inv per 128x128 block (fp8_utils).
        b = q.group_size
        return out_features * in_features + math.ceil(out_features / b) * math.ceil(in_features / b) * 4
    g = q.group_size
    groups = math.ceil(in_features / g)
    packed = out_features * in_features * q.bits // 8  # int32-packed qweight
    scales = groups * out_features * 2  # fp16 scales
    zeros = groups * out_features * q.bits // 8  # packed zero points (awq; gptq keeps qzeros too)
    g_idx = in_features * 4 if (q.method == "gptq" and q.desc_act) else 0
    return packed + scales + zeros + g_idx


def _moe_router_bytes(variant: Variant) -> int:
    s = variant.spec
    # The router (mlp.gate) is a ReplicatedLinear; Qwen's FP8 configs keep it in bf16
    # (modules_to_not_convert) and vLLM does not quantize it for AWQ/GPTQ Marlin MoE.
    return s.num_experts * s.hidden_size * 2


def layer_weight_bytes(variant: Variant, tp: int) -> int:
    """One decoder layer's bytes on one TP rank."""
    s = variant.spec
    hd, h = s.head_dim, s.hidden_size
    q_out = s.num_attention_heads // tp * hd
    kv_out = kv_heads_per_rank(s, tp) * hd
    total = _linear_bytes(q_out + 2 * kv_out, h, variant, "qkv_proj")
    total += _linear_bytes(h, s.num_attention_heads * hd // tp, variant, "o_proj")
    total += (2 * h + 2 * hd) * 2  # input/post-attention RMSNorm, q_norm, k_norm
    if s.is_moe:
        mi = s.moe_intermediate_size // tp
        per_expert = (_linear_bytes(2 * mi, h, variant, "experts.w13")
                      + _linear_bytes(h, mi, variant, "experts.w2"))
        total += s.num_experts * per_expert + _moe_router_bytes(variant)
    else:
        inter = s.intermediate_size // tp
        total += _linear_bytes(2 * inter, h, variant, "gate_up_proj")
        total += _linear_bytes(h, inter, variant, "down_proj")
    return total


def rotary_cache_bytes(s: ModelSpec, max_position: int) -> int:
    """cos/sin cache [max_position, head_dim] in the model dtype, one per model."""
    return max_position * s.head_dim * 2


def weight_bytes(variant: Variant, tp: int, rope_max_position: int | None = None,
                 layers: int | None = None, first_stage: bool = True,
                 last_stage: bool = True) -> int:
    """What vLLM's "Model loading took X GiB" reports for one TP rank (one PP stage)."""
    s = variant.spec
    layers = s.num_hidden_layers if layers is None else layers
    embed = _padded_vocab(s) // tp * s.hidden_size * 2  # embeddings stay 16-bit
    total = layers * layer_weight_bytes(variant, tp)
    if first_stage:
        total += embed
    if last_stage:
        total += s.hidden_size * 2  # final norm
        if not s.tie_word_embeddings or not first_stage:
            total += embed  # lm_head (tied: the embedding is reused, on the first stage)
    total += rotary_cache_bytes(s, rope_max_position or s.max_position_embeddings)
    return total


def parameter_count(variant: Variant) -> int:
    """Exact parameter count of the unquantized model (embeddings, lm_head unless tied)."""
    s = variant.spec
    h, hd = s.hidden_size, s.head_dim
    attn = h * s.num_attention_heads * hd * 2 + 2 * h * s.num_key_value_heads * hd
    norms = 2 * h + 2 * hd
    if s.is_moe:
        mlp = s.num_experts * 3 * h * s.moe_intermediate_size + h * s.num_experts
    else:
        mlp = 3 * h * s.intermediate_size
    embed = s.vocab_size * h
    return s.num_hidden_layers * (attn + norms + mlp) + h + embed * (1 if s.tie_word_embeddings else 2)


# --------------------------------------------------------------------------------------------
# KV cache


def kv_dtype_bytes(kv_cache_dtype: str) -> int:
    return 1 if kv_cache_dtype.startswith("fp8") else 2


def page_bytes(s: ModelSpec, kv_cache_dtype: str, tp: int) -> int:
    """One block (16 tokens) of one layer: K and V for this rank's KV heads."""
    return 2 * BLOCK_SIZE * kv_heads_per_rank(s, tp) * s.head_dim * kv_dtype_bytes(kv_cache_dtype)


def kv_bytes_per_token(s: ModelSpec, kv_cache_dtype: str, tp: int, layers: int | None = None) -> int:
    """KV-cache bytes one token occupies on one GPU, all its layers."""
    layers = s.num_hidden_layers if layers is None else layers
    return page_bytes(s, kv_cache_dtype, tp) * layers // BLOCK_SIZE


@dataclass(frozen=True)
class KvCapacity:
    num_blocks: int
    tokens: int  # vLLM's "GPU KV cache size: N tokens"
    max_concurrency: float  # vLLM's "Maximum concurrency for M tokens per request"
    max_model_len_limit: int  # the longest max_model_len one request could use


def kv_capacity(kv_cache_bytes: int, s: ModelSpec, kv_cache_dtype: str, tp: int,
                max_model_len: int, layers: int | None = None) -> KvCapacity:
    """What vLLM logs for a KV budget (kv_cache_utils.get_kv_cache_config / get_kv_cache_capacity)."""
    layers = s.num_hidden_layers if layers is None else layers
    blocks = max(0, kv_cache_bytes // (page_bytes(s, kv_cache_dtype, tp) * layers))
    blocks_per_request = math.ceil(max_model_len / BLOCK_SIZE)
    concurrency = blocks / blocks_per_request
    return KvCapacity(
        num_blocks=blocks,
        tokens=int(concurrency * max_model_len),
        max_concurrency=concurrency,
        max_model_len_limit=blocks * BLOCK_SIZE,
    )


# --------------------------------------------------------------------------------------------
# Activation, CUDA graphs, non-torch memory


def activation_bytes(variant: Variant, tp: int, max_num_batched_tokens: int, max_num_seqs: int,
                     enforce_eager: bool, cal: Calibration = CALIBRATION,
                     samples: bool = True) -> int:
    """Peak torch memory of vLLM's profile run above the loaded weights.

    `samples`: the rank computes logits and samples (the last pipeline stage); earlier stages
    only run their layers' forward pass.
    """
    s = variant.spec
    if s.is_moe:
        inter = s.num_experts_per_tok * s.moe_intermediate_size / tp
    else:
        inter = s.intermediate_size / tp
    per_token = cal.act_i * inter + cal.act_h * s.hidden_size + cal.act_c
    forward = max_num_batched_tokens * per_token
    if enforce_eager:
        forward *= cal.eager_activation_factor
    if not samples:
        return int(forward)
    rows = min(max_num_seqs, max_num_batched_tokens)
    hidden_alive = max_num_batched_tokens * s.hidden_size * 2
    sampler = rows * _padded_vocab(s) * cal.sampler_bytes_per_logit + hidden_alive
    return int(max(forward, sampler))


def cudagraph_capture_sizes(max_num_seqs: int, max_num_batched_tokens: int) -> list[int]:
    """vLLM's default capture sizes: [1, 2, 4] + 8..248 by 8 + 256.. by 16, up to the max."""
    largest = min(max_num_seqs * 2, 512, max_num_batched_tokens)
    sizes = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, 513, 16))
    return [x for x in sizes if x <= largest]


def cudagraph_bytes(variant: Variant, max_num_seqs: int, max_num_batched_tokens: int,
                    enforce_eager: bool, layers: int | None = None,
                    cal: Calibration = CALIBRATION) -> int:
    """Memory of the captured CUDA graphs (allocated after the KV cache, on top of it)."""
    if enforce_eager:
        return 0
    layers = variant.spec.num_hidden_layers if layers is None else layers
    n = len(cudagraph_capture_sizes(max_num_seqs, max_num_batched_tokens))
    per_layer = cal.graph_per_size_per_layer * n + cal.graph_per_seq_per_layer * max_num_seqs
    return int(layers * per_layer)


def non_torch_bytes(tp: int, cal: Calibration = CALIBRATION) -> int:
    return cal.non_torch_bytes + (cal.non_torch_tp_extra_bytes if tp > 1 else 0)


# --------------------------------------------------------------------------------------------
# One rank's budget


@dataclass(frozen=True)
class MemoryBreakdown:
    """One GPU's memory under a plan, in bytes."""

    total_bytes: int
    requested_bytes: int  # ceil(total × gpu_memory_utilization)
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    cudagraph_bytes: int
    kv_cache_bytes: int  # may be negative: the weights and overheads do not fit
    cuda_context_bytes: int
    fields: dict = field(default_factory=dict, compare=False)

    @property
    def footprint_bytes(self) -> int:
        """What the vLLM process holds on this GPU once started (context + requested + graphs)."""
        return self.cuda_context_bytes + self.requested_bytes + self.cudagraph_bytes


def requested_bytes(total_bytes: int, gpu_memory_utilization: float) -> int:
    return math.ceil(total_bytes * gpu_memory_utilization)


def breakdown(variant: Variant, total_bytes: int, gpu_memory_utilization: float, tp: int,
              max_num_batched_tokens: int, max_num_seqs: int, enforce_eager: bool,
              rope_max_position: int | None = None, cal: Calibration = CALIBRATION,
              layers: int | None = None, first_stage: bool = True,
              last_stage: bool = True) -> MemoryBreakdown:
    requested = requested_bytes(total_bytes, gpu_memory_utilization)
    weights = weight_bytes(variant, tp, rope_max_position, layers, first_stage, last_stage)
    act = activation_bytes(variant, tp, max_num_batched_tokens, max_num_seqs, enforce_eager, cal,
                           samples=last_stage)
    non_torch = non_torch_bytes(tp, cal)
    graphs = cudagraph_bytes(variant, max_num_seqs, max_num_batched_tokens, enforce_eager, layers, cal)
    return MemoryBreakdown(
        total_bytes=total_bytes,
        requested_bytes=requested,
        weights_bytes=weights,
        activation_bytes=act,
        non_torch_bytes=non_torch,
        cudagraph_bytes=graphs,
        kv_cache_bytes=requested - weights - act - non_torch,
        cuda_context_bytes=cal.cuda_context_bytes,
    )


def max_utilization(total_bytes: int, free_bytes: int, cudagraph: int,
                    margin_bytes: int, cal: Calibration = CALIBRATION) -> float:
    """Largest gpu_memory_utilization that passes vLLM's start check and leaves room for graphs.

    vLLM requires ceil(total × gmu) to be free after it created its CUDA context, and then
    allocates the CUDA graphs on top of the requested memory.
    """
    usable = free_bytes - cal.cuda_context_bytes - cudagraph - margin_bytes
    return math.floor(max(0, usable) / total_bytes * 1000) / 1000
