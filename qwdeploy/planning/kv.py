"""KV-cache geometry of vLLM 0.26: bytes per token, pages of 16 tokens, blocks, capacity. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass

from qwdeploy.planning.catalog import ModelSpec

BLOCK_SIZE = 16  # vLLM's default block size for FlashAttention/FlashInfer on CUDA
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16")


def kv_heads_per_rank(s: ModelSpec, tp: int) -> int:
    """KV heads split across TP ranks; when TP exceeds them each rank keeps one (replicated)."""
    return max(1, s.num_key_value_heads // tp)


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
