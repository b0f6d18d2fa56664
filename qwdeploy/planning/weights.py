"""Weight bytes per GPU as vLLM 0.26 holds them, and the tensor-parallel sizes it accepts. Pure.

Exact arithmetic over the model's parameters (qwdeploy.planning.checkpoint: from config.json, or
from the safetensors headers): TP shards, replicated norms and KV heads, the bytes each quantized
format's kernel holds on this GPU (qwdeploy.planning.quant), the padded vocabulary, the rotary cache.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TypeVar

from qwdeploy.planning import quant
from qwdeploy.planning.allocator import allocated_bytes
from qwdeploy.planning.calibration import CALIBRATION, Calibration
from qwdeploy.planning.catalog import ModelSpec, Variant
from qwdeploy.planning.checkpoint import from_config
from qwdeploy.planning.engine import WHOLE_MODEL, Engine, Span
from qwdeploy.planning.kv import kv_heads_per_rank
from qwdeploy.planning.layout import Layer, Layout, Linear

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
    if q.method == "bitsandbytes" and tp > 1:
        return (
            "pre-quantized bitsandbytes checkpoints refuse tensor parallelism in vLLM 0.26 ('Prequant "
            "BitsAndBytes models with tensor parallelism is not supported'); use one GPU per pipeline stage"
        )
    inter = s.moe_intermediate_size if s.is_moe else s.intermediate_size
    part = inter // tp
    if inter % tp:
        return f"intermediate size {inter} is not divisible by TP {tp}"
    if q.scheme == "fp8-block" and part % q.group_size:
        return (
            f"FP8 block-{q.group_size} weights: the gate/up shard {part} is not a multiple "
            f"of {q.group_size} at TP {tp} (vLLM: 'not divisible by weight quantization "
            f"block_n'); use a smaller TP or expert parallelism"
        )
    if q.family == "wna16" and (part % 128 or part % max(q.group_size, 1)):
        return (
            f"Marlin int{q.bits} kernels need the down_proj input shard ({part}) to be a "
            f"multiple of 128 and of the group size at TP {tp}"
        )
    return None


def valid_tp_sizes(variant: Variant, max_tp: int) -> list[int]:
    return [tp for tp in range(1, max_tp + 1) if tp_problem(variant, tp) is None]


def padded_vocab(s: ModelSpec) -> int:
    return math.ceil(s.vocab_size / VOCAB_PADDING) * VOCAB_PADDING


def uses_machete(variant: Variant, compute_capability: tuple[int, int]) -> bool:
    """vLLM 0.26 runs int4/int8 weight-only formats (AWQ, GPTQ, compressed-tensors WNA16) through
    Machete on compute capability 9.0 (log: MacheteLinearKernel), shapes permitting."""
    q = variant.spec.quantization
    return bool(q and q.family == "wna16" and tuple(compute_capability) == (9, 0))


T = TypeVar("T")


def layout_of(variant: Variant) -> Layout:
    """The parameters: from the safetensors headers when read, else from config.json."""
    return variant.layout or from_config(variant.spec)


def shard(linear: Linear, s: ModelSpec, tp: int) -> tuple[int, int, int]:
    """(N, K, K of the whole layer) of one TP rank's shard: column-parallel layers split N,
    row-parallel ones K; KV heads are replicated once TP exceeds them; the router is replicated."""
    if linear.role == "qkv":
        return (s.num_attention_heads // tp + 2 * kv_heads_per_rank(s, tp)) * s.head_dim, linear.k, linear.k
    if linear.role in ("o", "down", "experts_w2"):
        return linear.n, linear.k // tp, linear.k
    if linear.role in ("gate_up", "experts_w13"):
        return linear.n // tp, linear.k, linear.k
    if linear.role == "lm_head":
        return padded_vocab(s) // tp, linear.k, linear.k
    return linear.n, linear.k, linear.k


def linear_tensors(linear: Linear, s: ModelSpec, tp: int, cc: tuple[int, int]) -> tuple[int, ...]:
    """The tensors one TP rank holds for a (fused) linear, bytes each (fused experts: one tensor a
    kind for all of them): 16-bit, or the kernel's weight, scales and zero points."""
    n, k, k_full = shard(linear, s, tp)
    q = s.quantization
    if q is None or not linear.quantized:
        return (linear.count * n * k * 2,)
    name = quant.kernel(q, cc, n, k, k_full, moe=linear.role.startswith("experts"))
    parts = quant.FUSED_PARTS.get(linear.role, 1)
    return tuple(linear.count * t for t in quant.linear_tensors(q, name, n, k, k_full, parts) if t)


def linear_bytes(linear: Linear, s: ModelSpec, tp: int, cc: tuple[int, int]) -> int:
    """Bytes one TP rank holds for a (fused) linear, all its experts: 16-bit, or the kernel's."""
    return sum(linear_tensors(linear, s, tp, cc))


def layer_tensors(layer: Layer, s: ModelSpec, tp: int, cc: tuple[int, int]) -> tuple[tuple[int, ...], int]:
    """One decoder layer on one TP rank: the tensors as built, in vLLM's order, and the bytes of the
    FP8 linears, summed: their kernels rebuild them after loading into blocks the allocator already
    holds, so fresh-allocation rounding does not show (8B/14B/32B/4B-FP8 on the H100)."""
    built: list[int] = []
    rebuilt = 0
    for x in layer.linears:
        if s.quantization is not None and s.quantization.family == "fp8" and x.quantized:
            rebuilt += linear_bytes(x, s, tp, cc)
        else:
            built += linear_tensors(x, s, tp, cc)
    return (*built, layer.norm_elements * 2), rebuilt


def layer_bytes(layer: Layer, s: ModelSpec, tp: int, cc: tuple[int, int], experts_only: bool = False) -> int:
    """One decoder layer's parameter bytes on one TP rank (or its routed experts' only)."""
    linears = [x for x in layer.linears if x.role.startswith("experts") or not experts_only]
    norms = 0 if experts_only else layer.norm_elements * 2
    return sum(linear_bytes(x, s, tp, cc) for x in linears) + norms


def layer_weight_bytes(variant: Variant, tp: int, cc: tuple[int, int] = (9, 0), experts_only: bool = False) -> int:
    """The first decoder layer's bytes on one TP rank."""
    return layer_bytes(layout_of(variant).layers[0], variant.spec, tp, cc, experts_only)


def rotary_cache_bytes(s: ModelSpec, max_position: int) -> int:
    """cos/sin cache [max_position, head_dim] in the model dtype, one per model."""
    return max_position * s.head_dim * 2


def weight_bytes(variant: Variant, engine: Engine, span: Span = WHOLE_MODEL, cal: Calibration = CALIBRATION) -> int:
    """What vLLM's "Model loading took X GiB" reports for one TP rank (one PP stage): torch's
    allocated bytes for the tensors it builds (qwdeploy.planning.allocator), plus what the
    kernels add after loading."""
    s = variant.spec
    tp = engine.tensor_parallel_size
    total = _memo(_loaded_bytes, variant, tp, _cc(engine), engine.max_position, span)
    layers = span.layers or len(layout_of(variant).layers)
    if uses_machete(variant, engine.compute_capability):
        total += int(layers * cal.machete_extra_per_hidden_sq * s.hidden_size**2)
    dense_fp8 = bool(s.quantization and s.quantization.family == "fp8" and not s.is_moe)
    if dense_fp8 or engine.kv_cache_dtype.startswith("fp8"):
        total += layers * cal.fp8_extra_per_layer
    return total + cal.offsets_for(variant.name, tp).weights_bytes


def tensors(variant: Variant, engine: Engine, span: Span = WHOLE_MODEL) -> tuple[tuple[int, ...], int]:
    """One TP rank (of one PP stage): the tensors vLLM builds, bytes each, in its order (the
    embedding, the rotary cache with the first attention, each layer's linears and norms, the final
    norm, lm_head), and the bytes of the linears rebuilt after loading (layer_tensors)."""
    return _memo(_tensors, variant, engine.tensor_parallel_size, _cc(engine), engine.max_position, span)


def _cc(engine: Engine) -> tuple[int, int]:
    return engine.compute_capability[0], engine.compute_capability[1]


# The planner weighs the same (model, TP, GPU) for each context and batch it tries; a 235B MoE
# builds 18,000 tensors a rank, so each answer is computed once.
def _memo(cached: Callable[..., T], variant: Variant, *args: object) -> T:
    """`cached(variant, *args)`, from its cache where the variant hashes (a config.json's own
    rope_scaling, a dict, does not)."""
    try:
        hash(variant)
    except TypeError:
        uncached: Callable[..., T] = cached.__wrapped__  # type: ignore[attr-defined]
        return uncached(variant, *args)
    return cached(variant, *args)


@functools.lru_cache(maxsize=512)
def _loaded_bytes(variant: Variant, tp: int, cc: tuple[int, int], max_position: int | None, span: Span) -> int:
    built, rebuilt = _memo(_tensors, variant, tp, cc, max_position, span)
    return allocated_bytes(built) + rebuilt


@functools.lru_cache(maxsize=512)
def _tensors(
    variant: Variant, tp: int, cc: tuple[int, int], max_position: int | None, span: Span
) -> tuple[tuple[int, ...], int]:
    s, lay = variant.spec, layout_of(variant)
    embed = padded_vocab(s) // tp * s.hidden_size * 2  # embeddings stay 16-bit
    built: list[int] = [embed] if span.first_stage else []
    built.append(rotary_cache_bytes(s, max_position or s.context_length))
    rebuilt = 0
    per_layer: dict[Layer, tuple[tuple[int, ...], int]] = {}
    for layer in lay.layers[span.start_layer : span.start_layer + (span.layers or len(lay.layers))]:
        if layer not in per_layer:
            per_layer[layer] = layer_tensors(layer, s, tp, cc)
        built += per_layer[layer][0]
        rebuilt += per_layer[layer][1]
    if span.last_stage:
        built.append(lay.final_norm_elements * 2)
        if lay.lm_head is not None:
            built += linear_tensors(lay.lm_head, s, tp, cc)
        elif not span.first_stage:
            built.append(embed)  # tied: the last stage holds its own copy as lm_head
    return tuple(built), rebuilt


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
