"""Context length: Qwen's YaRN setting past the native window, vLLM's derived limit, rounding. Pure."""

from __future__ import annotations

from typing import Any

from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.kv import BLOCK_SIZE

YARN_ORIGINAL_MAX = 32768  # Qwen3's native window; YaRN factor f serves f × 32768 tokens
YARN_MAX_FACTOR = 4  # Qwen validated YaRN up to factor 4 (131072 tokens)


def rope_for(variant: Variant, max_model_len: int) -> dict[str, Any] | None:
    """Qwen's YaRN setting for a context past the native window (None when not needed)."""
    if max_model_len <= variant.spec.context_length or variant.is_2507 or variant.spec.rope_scaling:
        return None  # within the window, or config.json scales RoPE itself
    factor = 2.0 if max_model_len <= 2 * YARN_ORIGINAL_MAX else float(YARN_MAX_FACTOR)
    return {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": YARN_ORIGINAL_MAX}


def context_ceiling(variant: Variant, allow_yarn: bool) -> int:
    """The longest context the model serves: native, or YaRN's 131072 where allowed."""
    native = variant.spec.context_length
    if variant.is_2507 or not allow_yarn or variant.spec.rope_scaling:
        return native
    return max(native, YARN_ORIGINAL_MAX * YARN_MAX_FACTOR)


def rope_max_position(rope: dict[str, Any] | None) -> int | None:
    """Positions the rotary cache covers under YaRN (original × factor), else None (config's)."""
    return int(rope["original_max_position_embeddings"] * rope["factor"]) if rope else None


def derived_context(variant: Variant, rope: dict[str, Any] | None) -> int:
    """vLLM's derived max_model_len: max_position_embeddings, or original × factor with YaRN."""
    return rope_max_position(rope) or variant.spec.context_length


def round_context(tokens: int) -> int:
    """A readable max_model_len: multiples of 1024 from 2048 up, else of the block size."""
    if tokens >= 2048:
        return tokens // 1024 * 1024
    return tokens // BLOCK_SIZE * BLOCK_SIZE
