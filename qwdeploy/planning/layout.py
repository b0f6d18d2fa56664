"""A checkpoint's parameters as vLLM's Qwen3 model holds them: fused linears per decoder layer,
norms, embedding and lm_head. Plain data, built from config.json alone (catalog models) or from
the safetensors headers (qwdeploy.planning.checkpoint). Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Bytes per element of each safetensors dtype (safetensors' own names).
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # what vLLM treats as an unquantized tensor


@dataclass(frozen=True)
class Tensor:
    """One tensor of a safetensors header: its name, dtype and shape (never its data)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.elements * DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class Linear:
    """One of vLLM's (fused) linear layers, unsharded: N output and K input features."""

    role: str  # qkv | o | gate_up | down | experts_w13 | experts_w2 | router | lm_head
    n: int
    k: int
    quantized: bool = True  # False: kept in the model dtype (16-bit)
    count: int = 1  # routed experts of this kind in the layer


@dataclass(frozen=True)
class Layer:
    """One decoder layer: its linears and its RMSNorm weights (elements, replicated)."""

    linears: tuple[Linear, ...]
    norm_elements: int


@dataclass(frozen=True)
class Layout:
    """Every parameter vLLM allocates for the model, before tensor parallelism."""

    layers: tuple[Layer, ...]
    vocab_rows: int  # embed_tokens rows (config.json vocab_size; vLLM pads them to 64)
    lm_head: Linear | None  # None: tied to the embedding
    final_norm_elements: int
    checkpoint_bytes: int = 0  # sum of the headers' tensors; 0 for a layout from config.json
    tensors: int = 0  # how many tensors the headers list
    ignored: tuple[str, ...] = ()  # tensors vLLM's Qwen3 model has no place for
