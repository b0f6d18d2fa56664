"""Weight bytes per GPU as vLLM 0.26 holds them, and the tensor-parallel sizes it accepts. Pure.

Exact arithmetic from config.json: TP shards, replicated norms and KV heads, FP8 block scales,
AWQ/GPTQ packing (Marlin, or Machete on Hopper), the padded vocabulary, the rotary cache.
"""

from __future__ import annotations

import math

from qwdeploy.planning.calibration import CALIBRATION, Calibration
from qwdeploy.planning.catalog import ModelSpec, Variant
from qwdeploy.planning.engine import WHOLE_MODEL, Engine, Span
from qwdeploy.planning.kv import kv_heads_per_rank

VOCAB_PADDING = 64  # VocabParallelEmbedding pads the vocab to a multiple of 64


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
    if padded_vocab(s) % tp:
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


def padded_vocab(s: ModelSpec) -> int:
    return math.ceil(s.vocab_size / VOCAB_PADDING) * VOCAB_PADDING


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


def weight_bytes(variant: Variant, engine: Engine, span: Span = WHOLE_MODEL, cal: Calibration = CALIBRATION) -> int:
    """What vLLM's "Model loading took X GiB" reports for one TP rank (one PP stage)."""
    s = variant.spec
    tp = engine.tensor_parallel_size
    layers = s.num_hidden_layers if span.layers is None else span.layers
    embed = padded_vocab(s) // tp * s.hidden_size * 2  # embeddings stay 16-bit
    machete = uses_machete(variant, engine.compute_capability)
    total = layers * layer_weight_bytes(variant, tp, machete)
    if machete:
        total += int(layers * cal.machete_extra_per_hidden_sq * s.hidden_size**2)
    dense_fp8 = bool(s.quantization and s.quantization.method == "fp8" and not s.is_moe)
    if dense_fp8 or engine.kv_cache_dtype.startswith("fp8"):
        total += layers * cal.fp8_extra_per_layer
    if span.first_stage:
        total += embed
    if span.last_stage:
        total += s.hidden_size * 2  # final norm
        if not s.tie_word_embeddings or not span.first_stage:
            total += embed  # lm_head (tied: the embedding is reused, on the first stage)
    total += rotary_cache_bytes(s, engine.max_position or s.max_position_embeddings)
    return total + cal.offsets_for(variant.name, tp).weights_bytes


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
