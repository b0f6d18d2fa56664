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
from dataclasses import dataclass

from qwdeploy.catalog import ModelSpec, Variant

VLLM_VERSION = "0.26.0"
GiB = 1 << 30
MiB = 1 << 20
BLOCK_SIZE = 16  # vLLM's default block size for FlashAttention/FlashInfer on CUDA
VOCAB_PADDING = 64  # VocabParallelEmbedding pads the vocab to a multiple of 64

KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16")


@dataclass(frozen=True)
class Calibration:
    """Overheads measured on real vLLM 0.26.0 on an H100 80GB (runs in tests/data/vllm_runs and
    bench/results/raw; `python bench/fit_activation.py` refits them). Everything else in this
    module is exact arithmetic from config.json."""

    # Forward pass of the profile run, bytes per token of max_num_batched_tokens:
    # act_i × intermediate per rank + act_h × hidden + act_c. Fitted on the forward-bound runs
    # (max_num_batched_tokens 16384: 4B 1.25, 8B 1.58, 32B 2.99 GiB; warm-cache 8B at 8192: 0.78).
    act_i: float = 6.72
    act_h: float = 2.88
    act_c: float = 9175.0
    # A cold torch.compile allocates while it compiles, with Inductor's size hint of 8192 tokens:
    # hidden × (8192 × compile_per_hint + mnbt × compile_per_token) bytes. Fitted on 8B at
    # mnbt 2048 / 8192 (1.19 / 1.29 GiB); predicts 0.6B 0.32, 4B 0.80, 14B 1.61, 32B 1.53 GiB
    # (measured 0.32, 0.80, 1.61, 1.53). A warm compile cache skips it (8B 8192: 0.78 GiB).
    compile_hint_tokens: int = 8192
    compile_per_hint: float = 37.0
    compile_per_token: float = 4.26
    # Sampler pass: min(max_num_seqs, mnbt) rows of vocab-wide logits (0.6B, 256 rows: 0.32 GiB;
    # bounded above by 4B's 1024 rows at 1.25 GiB).
    sampler_bytes_per_logit: float = 8.1
    # The V1 runner's dummy sampler sorts the logits for top-k/top-p: fp32 logits, sorted values
    # and int64 indices, ~16 B a logit. 30B-A3B, 512 rows at mnbt 16384 (m_q30ba3b_throughput):
    # peak 2.35 GiB = fused-MoE caches 1.14 + 15.5 B × 512 × 151,936.
    sampler_bytes_per_logit_v1: float = 15.5
    # --enforce-eager runs uncompiled: 8B 1.66 vs 1.58 GiB, 14B 2.25 GiB at 16384.
    eager_activation_factor: float = 1.05
    # Qwen3-MoE runs on vLLM's V1 model runner, whose fused-MoE caches (top_k × (3 × moe
    # intermediate + hidden) bf16 per token) stay on top of the peak: 30B-A3B 1.15 GiB at 8192.
    moe_workspace_factor: float = 1.0
    # Non-torch memory after vLLM's start snapshot (cuBLAS workspaces, attention buffers):
    # 241,172,480 B in every dense TP=1 H100 run, 257,949,696 B for Qwen3-MoE (V1 runner).
    # TP>1 adds NCCL / custom all-reduce buffers: an estimate (no multi-GPU run measured yet).
    non_torch_bytes: int = 241_172_480
    non_torch_moe_bytes: int = 257_949_696
    non_torch_tp_extra_bytes: int = int(0.40 * GiB)
    # The CUDA context vLLM holds before it reads free memory: 552,402,944 B on the H100
    # (total 85,017,493,504 − free 84,465,090,560 at vLLM's start snapshot).
    cuda_context_bytes: int = 552_402_944
    # CUDA-graph pool (allocated on top of the KV budget by the V2 runner of dense models), per
    # layer: graph_per_size × capture sizes + graph_per_seq × max_num_seqs. Least squares over
    # 16 H100 runs (0.23-1.88 GiB); largest miss 0.16 GiB (14B).
    graph_per_size_per_layer: float = 2.6708e-4 * GiB
    graph_per_seq_per_layer: float = 1.488e-5 * GiB
    # The V1 runner (Qwen3-MoE) estimates its graphs and takes the estimate out of the KV budget:
    # per layer, a piecewise graph size (capture sizes up to min(2 × max_num_seqs, 512, mnbt))
    # and a FULL decode graph size (those up to max_num_seqs). 30B-A3B, 48 layers: 526,385,152 B
    # at 51 + 35 sizes (mns 256), 689,963,008 B at 51 + 51 (mns 512). The real pool came out
    # 1.25-1.33 × the estimate (0.63-0.80 GiB).
    moe_graph_estimate_per_layer_full: float = (689_963_008 - 526_385_152) / 48 / 16  # 212,992
    moe_graph_estimate_per_layer_piecewise: float = (526_385_152 / 48 - 35 * 212_992) / 51
    moe_graph_actual_over_estimate: float = 1.33
    # Per-layer allocations beside the parameters: FP8 (weights or KV) ~1 MiB a layer (8B fp8
    # KV +35.7 MB, 32B-FP8 +68 MB); AWQ/GPTQ through Machete on Hopper ~0.167 × hidden² bytes a
    # layer (14B-AWQ +183 MB over 40 layers, 32B-AWQ +267 MB over 64, 4B-AWQ under +52 MB).
    fp8_extra_per_layer: int = 1 * MiB
    machete_extra_per_hidden_sq: float = 0.167


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
        return (
            f"FP8 block-{q.group_size} weights: the gate/up shard {shard} is not a multiple "
            f"of {q.group_size} at TP {tp} (vLLM: 'not divisible by weight quantization "
            f"block_n'); use a smaller TP or expert parallelism"
        )
    if q.method in ("awq", "gptq") and (shard % 128 or shard % q.group_size):
        return (
            f"Marlin int{q.bits} kernels need the down_proj input shard ({shard}) to be a "
            f"multiple of 128 and of the group size at TP {tp}"
        )
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


def uses_machete(variant: Variant, compute_capability: tuple[int, int]) -> bool:
    """vLLM 0.26 runs AWQ/GPTQ int4 through Machete on Hopper (log: MacheteLinearKernel)."""
    q = variant.spec.quantization
    return bool(q and q.method in ("awq", "gptq") and q.bits == 4 and tuple(compute_capability) == (9, 0))


def _linear_bytes(out_features: int, in_features: int, variant: Variant, name: str, machete: bool = False) -> int:
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
    # Marlin keeps packed zero points; Machete (Hopper) keeps them as fp16 per group element.
    zeros = groups * out_features * (2 if machete else q.bits / 8)
    g_idx = in_features * 4 if (q.method == "gptq" and q.desc_act) else 0
    return int(packed + scales + zeros + g_idx)


def _moe_router_bytes(variant: Variant) -> int:
    s = variant.spec
    # The router (mlp.gate) is a ReplicatedLinear; Qwen's FP8 configs keep it in bf16
    # (modules_to_not_convert) and vLLM does not quantize it for AWQ/GPTQ Marlin MoE.
    return s.num_experts * s.hidden_size * 2


def layer_weight_bytes(variant: Variant, tp: int, machete: bool = False) -> int:
    """One decoder layer's parameter bytes on one TP rank."""
    s = variant.spec
    hd, h = s.head_dim, s.hidden_size
    q_out = s.num_attention_heads // tp * hd
    kv_out = kv_heads_per_rank(s, tp) * hd
    total = _linear_bytes(q_out + 2 * kv_out, h, variant, "qkv_proj", machete)
    total += _linear_bytes(h, s.num_attention_heads * hd // tp, variant, "o_proj", machete)
    total += (2 * h + 2 * hd) * 2  # input/post-attention RMSNorm, q_norm, k_norm
    if s.is_moe:
        mi = s.moe_intermediate_size // tp
        per_expert = _linear_bytes(2 * mi, h, variant, "experts.w13") + _linear_bytes(
            h, mi, variant, "experts.w2"
        )  # fused MoE: Marlin layout
        total += s.num_experts * per_expert + _moe_router_bytes(variant)
    else:
        inter = s.intermediate_size // tp
        total += _linear_bytes(2 * inter, h, variant, "gate_up_proj", machete)
        total += _linear_bytes(h, inter, variant, "down_proj", machete)
    return total


def rotary_cache_bytes(s: ModelSpec, max_position: int) -> int:
    """cos/sin cache [max_position, head_dim] in the model dtype, one per model."""
    return max_position * s.head_dim * 2


def weight_bytes(
    variant: Variant,
    tp: int,
    rope_max_position: int | None = None,
    layers: int | None = None,
    first_stage: bool = True,
    last_stage: bool = True,
    compute_capability: tuple[int, int] = (9, 0),
    kv_cache_dtype: str = "auto",
    cal: "Calibration | None" = None,
) -> int:
    """What vLLM's "Model loading took X GiB" reports for one TP rank (one PP stage)."""
    cal = cal or CALIBRATION
    s = variant.spec
    layers = s.num_hidden_layers if layers is None else layers
    embed = _padded_vocab(s) // tp * s.hidden_size * 2  # embeddings stay 16-bit
    machete = uses_machete(variant, compute_capability)
    total = layers * layer_weight_bytes(variant, tp, machete)
    if machete:
        total += int(layers * cal.machete_extra_per_hidden_sq * s.hidden_size**2)
    dense_fp8 = bool(s.quantization and s.quantization.method == "fp8" and not s.is_moe)
    if dense_fp8 or kv_cache_dtype.startswith("fp8"):
        total += layers * cal.fp8_extra_per_layer
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


def kv_capacity(
    kv_cache_bytes: int, s: ModelSpec, kv_cache_dtype: str, tp: int, max_model_len: int, layers: int | None = None
) -> KvCapacity:
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


def activation_bytes(
    variant: Variant,
    tp: int,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    enforce_eager: bool,
    cal: Calibration = CALIBRATION,
    samples: bool = True,
    compile_cache_warm: bool = False,
) -> int:
    """Peak torch memory of vLLM's profile run above the loaded weights ("peak activation").

    The largest of: the forward pass over max_num_batched_tokens tokens; what a cold
    torch.compile allocates while compiling; the sampler pass over max_num_seqs rows (only the
    rank that samples: the last pipeline stage). Qwen3-MoE adds its fused-MoE caches on top.
    """
    s = variant.spec
    tokens = max_num_batched_tokens
    dense_inter = 0 if s.is_moe else s.intermediate_size / tp
    forward = tokens * (cal.act_i * dense_inter + cal.act_h * s.hidden_size + cal.act_c)
    if enforce_eager:
        forward *= cal.eager_activation_factor
    peaks = [forward]
    if not enforce_eager and not compile_cache_warm:
        peaks.append(s.hidden_size * (cal.compile_hint_tokens * cal.compile_per_hint + tokens * cal.compile_per_token))
    if samples:
        rows = min(max_num_seqs, tokens)
        per_logit = cal.sampler_bytes_per_logit_v1 if runs_v1_model_runner(variant) else cal.sampler_bytes_per_logit
        peaks.append(rows * _padded_vocab(s) * per_logit + tokens * s.hidden_size * 2)
    peak = max(peaks)
    if s.is_moe:
        mi = s.moe_intermediate_size / tp
        peak += cal.moe_workspace_factor * tokens * s.num_experts_per_tok * (3 * mi + s.hidden_size) * 2
    return int(peak)


def runs_v1_model_runner(variant: Variant) -> bool:
    """vLLM 0.26 uses its V2 model runner for dense Qwen3, the V1 runner for Qwen3-MoE."""
    return variant.spec.is_moe


def cudagraph_capture_sizes(max_num_seqs: int, max_num_batched_tokens: int) -> list[int]:
    """vLLM's default capture sizes: [1, 2, 4] + 8..248 by 8 + 256.. by 16, up to the max."""
    largest = min(max_num_seqs * 2, 512, max_num_batched_tokens)
    sizes = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, 513, 16))
    return [x for x in sizes if x <= largest]


def cudagraph_bytes(
    variant: Variant,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    enforce_eager: bool,
    layers: int | None = None,
    cal: Calibration = CALIBRATION,
) -> int:
    """Memory of the captured CUDA graphs (allocated once the KV cache exists)."""
    if enforce_eager:
        return 0
    layers = variant.spec.num_hidden_layers if layers is None else layers
    n = len(cudagraph_capture_sizes(max_num_seqs, max_num_batched_tokens))
    if runs_v1_model_runner(variant):
        return int(
            cudagraph_estimate_bytes(variant, max_num_seqs, max_num_batched_tokens, enforce_eager, layers, cal)
            * cal.moe_graph_actual_over_estimate
        )
    per_layer = cal.graph_per_size_per_layer * n + cal.graph_per_seq_per_layer * max_num_seqs
    return int(layers * per_layer)


def cudagraph_estimate_bytes(
    variant: Variant,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    enforce_eager: bool,
    layers: int | None = None,
    cal: Calibration = CALIBRATION,
) -> int:
    """The graph estimate vLLM subtracts from the KV budget: V1 runner only (0 for dense)."""
    if enforce_eager or not runs_v1_model_runner(variant):
        return 0
    layers = variant.spec.num_hidden_layers if layers is None else layers
    sizes = cudagraph_capture_sizes(max_num_seqs, max_num_batched_tokens)
    full = [x for x in sizes if x <= max_num_seqs]  # FULL graphs serve uniform decode batches
    per_layer = cal.moe_graph_estimate_per_layer_piecewise * len(sizes) + cal.moe_graph_estimate_per_layer_full * len(
        full
    )
    return int(layers * per_layer)


def non_torch_bytes(tp: int, cal: Calibration = CALIBRATION, variant: Variant | None = None) -> int:
    base = cal.non_torch_moe_bytes if variant is not None and runs_v1_model_runner(variant) else cal.non_torch_bytes
    return base + (cal.non_torch_tp_extra_bytes if tp > 1 else 0)


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
    cudagraph_in_budget_bytes: int = 0  # the V1 runner's graph estimate, taken from the KV budget

    @property
    def cudagraph_on_top_bytes(self) -> int:
        return max(0, self.cudagraph_bytes - self.cudagraph_in_budget_bytes)

    @property
    def footprint_bytes(self) -> int:
        """What the vLLM process holds on this GPU once started (context + requested + graphs)."""
        return self.cuda_context_bytes + self.requested_bytes + self.cudagraph_on_top_bytes


def requested_bytes(total_bytes: int, gpu_memory_utilization: float) -> int:
    return math.ceil(total_bytes * gpu_memory_utilization)


def breakdown(
    variant: Variant,
    total_bytes: int,
    gpu_memory_utilization: float,
    tp: int,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    enforce_eager: bool,
    rope_max_position: int | None = None,
    cal: Calibration = CALIBRATION,
    layers: int | None = None,
    first_stage: bool = True,
    last_stage: bool = True,
    kv_cache_dtype: str = "auto",
    compute_capability: tuple[int, int] = (9, 0),
    compile_cache_warm: bool = False,
) -> MemoryBreakdown:
    requested = requested_bytes(total_bytes, gpu_memory_utilization)
    weights = weight_bytes(
        variant, tp, rope_max_position, layers, first_stage, last_stage, compute_capability, kv_cache_dtype, cal
    )
    act = activation_bytes(
        variant,
        tp,
        max_num_batched_tokens,
        max_num_seqs,
        enforce_eager,
        cal,
        samples=last_stage,
        compile_cache_warm=compile_cache_warm,
    )
    non_torch = non_torch_bytes(tp, cal, variant)
    graphs = cudagraph_bytes(variant, max_num_seqs, max_num_batched_tokens, enforce_eager, layers, cal)
    in_budget = cudagraph_estimate_bytes(variant, max_num_seqs, max_num_batched_tokens, enforce_eager, layers, cal)
    return MemoryBreakdown(
        total_bytes=total_bytes,
        requested_bytes=requested,
        weights_bytes=weights,
        activation_bytes=act,
        non_torch_bytes=non_torch,
        cudagraph_bytes=graphs,
        kv_cache_bytes=requested - weights - act - non_torch - in_budget,
        cuda_context_bytes=cal.cuda_context_bytes,
        cudagraph_in_budget_bytes=in_budget,
    )


def max_utilization(
    total_bytes: int, free_bytes: int, cudagraph: int, margin_bytes: int, cal: Calibration = CALIBRATION
) -> float:
    """Largest gpu_memory_utilization that passes vLLM's start check and leaves room for graphs.

    vLLM requires ceil(total × gmu) to be free after it created its CUDA context, and then
    allocates the CUDA graphs on top of the requested memory.
    """
    usable = free_bytes - cal.cuda_context_bytes - cudagraph - margin_bytes
    return math.floor(max(0, usable) / total_bytes * 1000) / 1000
