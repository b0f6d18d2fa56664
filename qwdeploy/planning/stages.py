"""Pipeline stages as vLLM 0.26 splits a model across nodes (one stage per node). Pure.

One node is one stage holding every layer. Across nodes:
  * layers: `vllm.distributed.utils.get_pp_indices` splits them evenly; the remainder goes to
    the stages before the last, starting from the second-to-last (`partition_layers`).
  * dense Qwen3 (`qwen2.py`/`qwen3.py`): embed_tokens on the first stage (and on the last when
    tied: it is the lm_head), final norm and lm_head on the last (weights.weight_bytes).
  * Qwen3-MoE (`qwen3_moe.py`): embed_tokens, the final norm and lm_head are built on EVERY
    stage (no PPMissingLayer there), so every stage holds both vocab matrices.
  * each stage's KV budget is computed like a single GPU's, for its own layers; the engine
    keeps the smallest block count over all workers (kv_cache_utils, min over workers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qwdeploy.planning.calibration import CALIBRATION, Calibration
from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.engine import Engine, Span
from qwdeploy.planning.kv import KvCapacity, kv_capacity
from qwdeploy.planning.memory import MemoryBreakdown, breakdown
from qwdeploy.planning.weights import tp_problem


def partition_layers(num_layers: int, pp: int) -> list[int]:
    """Layers of each pipeline stage: vLLM 0.26 `get_pp_indices` without VLLM_PP_LAYER_PARTITION."""
    if pp < 1 or pp > num_layers:
        raise ValueError(f"cannot split {num_layers} layers into {pp} stages")
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):  # remainder: second-to-last stage first, then backwards
        parts[-i] += 1
    return parts


def layer_ranges(num_layers: int, pp: int) -> list[tuple[int, int]]:
    """[start, end) layer indices of each stage."""
    out, start = [], 0
    for n in partition_layers(num_layers, pp):
        out.append((start, start + n))
        start += n
    return out


@dataclass(frozen=True)
class Stage:
    """One pipeline stage (one node): its layers, one GPU's memory, and its own KV capacity."""

    index: int
    start_layer: int
    end_layer: int  # exclusive
    embedding: bool  # holds embed_tokens
    lm_head: bool  # holds the final norm and lm_head
    memory: MemoryBreakdown  # one GPU (TP rank) of this stage
    capacity: KvCapacity  # what this stage alone could hold

    @property
    def layers(self) -> int:
        return self.end_layer - self.start_layer

    def to_json(self) -> dict[str, Any]:
        m = self.memory
        return {
            "stage": self.index,
            "layers": [self.start_layer, self.end_layer],
            "num_layers": self.layers,
            "embedding": self.embedding,
            "lm_head": self.lm_head,
            "requested_bytes": m.requested_bytes,
            "weights_bytes": m.weights_bytes,
            "activation_bytes": m.activation_bytes,
            "non_torch_bytes": m.non_torch_bytes,
            "kv_cache_bytes": max(0, m.kv_cache_bytes),
            "cudagraph_bytes": m.cudagraph_bytes,
            "num_gpu_blocks": self.capacity.num_blocks,
        }


def stage_span(variant: Variant, index: int, pp: int) -> Span:
    """What stage `index` of `pp` holds besides its layers."""
    start, end = layer_ranges(variant.spec.num_hidden_layers, pp)[index]
    first, last = index == 0, index == pp - 1
    if variant.spec.is_moe:  # qwen3_moe.py builds embed_tokens, norm and lm_head on every rank
        return Span(layers=end - start, start_layer=start, first_stage=True, last_stage=True, samples=last)
    return Span(layers=end - start, start_layer=start, first_stage=first, last_stage=last, samples=last)


def stage_memory(
    variant: Variant,
    engine: Engine,
    pp: int,
    total_bytes: int,
    gpu_memory_utilization: float,
    cal: Calibration = CALIBRATION,
) -> tuple[Stage, ...]:
    """Every stage's per-GPU budget (memory.breakdown for its layers) and KV capacity."""
    s = variant.spec
    out = []
    for i, (start, end) in enumerate(layer_ranges(s.num_hidden_layers, pp)):
        span = stage_span(variant, i, pp)
        b = breakdown(variant, total_bytes, gpu_memory_utilization, engine, span, cal)
        cap = kv_capacity(
            b.kv_cache_bytes, s, engine.kv_cache_dtype, engine.tensor_parallel_size, engine.max_model_len, end - start
        )
        embedding = span.first_stage or (span.last_stage and s.tie_word_embeddings)
        out.append(Stage(i, start, end, embedding, span.last_stage, b, cap))
    return tuple(out)


def tightest(stages: Sequence[Stage]) -> Stage:
    """The stage with the fewest KV blocks: vLLM sizes every worker's cache to it."""
    return min(stages, key=lambda st: (st.capacity.num_blocks, -st.index))


def most_layers(variant: Variant, pp: int) -> int:
    """Decoder layers of the largest stage (it captures the largest CUDA graphs)."""
    return max(partition_layers(variant.spec.num_hidden_layers, pp))


def layout_problem(variant: Variant, tp: int, pp: int, gpus_per_node: int) -> str | None:
    """Why this TP × PP layout would be refused (by vLLM, or by us for TP across nodes)."""
    problem = tp_problem(variant, tp)
    if problem:
        return problem
    if tp > gpus_per_node:
        return (
            f"tensor parallel {tp} does not fit in a node of {gpus_per_node} GPUs (tensor "
            f"parallel stays inside a node; pipeline parallel goes across nodes)"
        )
    layers = variant.spec.num_hidden_layers
    if pp > layers:
        return f"{pp} pipeline stages for {layers} layers: vLLM gives every stage at least one layer"
    return None


RAY_PORT = 6379  # `ray start --head` default GCS port
RAY_EXECUTOR = "ray"  # vLLM's --distributed-executor-backend for more than one node
