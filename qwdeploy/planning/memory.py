"""One GPU's memory budget under vLLM (V1 engine): overheads and the KV cache. Pure, no I/O.

How vLLM sizes the KV cache, per TP rank (0.26; `Engine.vllm` holds what later releases change,
qwdeploy.planning.versions):

    requested = ceil(total × gpu_memory_utilization)       # must be free when vLLM starts
    kv_cache  = requested − weights − peak_activation − non_torch − graphs_in_budget
    blocks    = kv_cache // (page_bytes × layers)           # page: 16 tokens of one layer
    tokens    = int(blocks / ceil(max_model_len / 16) × max_model_len)

CUDA-graph memory is NOT taken from `requested` in 0.26 for dense models (its V2 model runner
reports 0 for the graph estimate); it is allocated on top, so it matters for what must be free,
not for KV. From 0.29 the V2 runner captures its graphs while profiling and they come out of the
budget. From 0.27 the profiler counts everything the process took since its start snapshot, so
the V2 runner's per-request sampler buffers come out of the budget too (in `non_torch`). At
TP > 1 the communicators (qwdeploy.planning.distributed) are allocated before vLLM's start
snapshot: outside the KV budget, inside the free-memory check and the GPU's footprint.

The overhead constants (qwdeploy.planning.calibration) come from real vLLM 0.26.0 runs on an
H100 80GB (tests/data/vllm_runs/); each says which runs fixed it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qwdeploy.planning.calibration import CALIBRATION, Calibration
from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.distributed import distributed, init_bytes
from qwdeploy.planning.engine import WHOLE_MODEL, Engine, Span
from qwdeploy.planning.versions import BASELINE, VllmRules
from qwdeploy.planning.weights import padded_vocab, weight_bytes


def activation_bytes(variant: Variant, engine: Engine, cal: Calibration = CALIBRATION, samples: bool = True) -> int:
    """Peak torch memory of vLLM's profile run above the loaded weights ("peak activation").

    The largest of: the forward pass over max_num_batched_tokens tokens; what a cold
    torch.compile allocates while compiling; the sampler pass over max_num_seqs rows (only the
    rank that samples: the last pipeline stage). Qwen3-MoE adds its fused-MoE caches on top.
    """
    s = variant.spec
    tp, tokens = engine.tensor_parallel_size, engine.max_num_batched_tokens
    dense_inter = 0 if s.is_moe else s.intermediate_size / tp
    forward = tokens * (cal.act_i * dense_inter + cal.act_h * s.hidden_size + cal.act_c)
    if engine.enforce_eager:
        forward *= cal.eager_activation_factor
    peaks = [forward]
    if not engine.enforce_eager and not engine.compile_cache_warm:
        compiling = s.hidden_size * (cal.compile_hint_tokens * cal.compile_per_hint + tokens * cal.compile_per_token)
        peaks.append(compiling * (cal.compile_tp_factor / tp if tp > 1 else 1.0))
    if samples:
        rows = min(engine.max_num_seqs, tokens)
        per_logit = (
            cal.sampler_bytes_per_logit_v1
            if runs_v1_model_runner(variant, engine.vllm)
            else cal.sampler_bytes_per_logit + engine.vllm.v2_sampler_extra_bytes_per_logit
        )
        peaks.append(rows * padded_vocab(s) * per_logit + tokens * s.hidden_size * 2)
    peak = max(peaks)
    if s.is_moe:
        mi = s.moe_intermediate_size
        peak += cal.moe_workspace_factor * tokens * s.num_experts_per_tok * (3 * mi + s.hidden_size) * 2
    compiles = not engine.enforce_eager and not engine.compile_cache_warm
    peak += cal.offsets_for(variant.name, tp).activation_per_token_for(compiles) * tokens
    return max(0, int(peak))


def runs_v1_model_runner(variant: Variant, vllm: VllmRules = BASELINE) -> bool:
    """vLLM runs dense Qwen3 on its V2 model runner; Qwen3-MoE on the V1 runner up to 0.28
    (`use_v2_model_runner`, vllm/config/vllm.py), on V2 from 0.29."""
    return variant.spec.is_moe and not vllm.moe_on_v2_runner


def cudagraph_capture_sizes(
    max_num_seqs: int,
    max_num_batched_tokens: int,
    vllm: VllmRules = BASELINE,
    compute_capability: tuple[int, int] = (9, 0),
) -> list[int]:
    """vLLM's default capture sizes (`VllmConfig._set_cudagraph_sizes`): [1, 2, 4] + 8..248 by 8
    + 256.. by 16, up to min(2 × max_num_seqs, 512 (Blackwell from 0.28: 1024), mnbt); plus
    max_num_batched_tokens when that is the largest, and from 0.31 max_num_seqs."""
    cap = vllm.max_capture_size_sm100 if compute_capability[0] == 10 else 512
    largest = min(max_num_seqs * 2, cap, max_num_batched_tokens)
    sizes = [x for x in [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, cap + 1, 16)) if x <= largest]
    if max_num_batched_tokens <= largest:
        sizes.append(max_num_batched_tokens)
    if vllm.max_num_seqs_captured and max_num_seqs <= min(max_num_seqs * 2, cap, max_num_batched_tokens):
        sizes.append(max_num_seqs)
    return sorted(set(sizes))


def capture_sizes(engine: Engine) -> list[int]:
    """The engine's CUDA-graph capture sizes (none when eager)."""
    if engine.enforce_eager:
        return []
    return cudagraph_capture_sizes(
        engine.max_num_seqs, engine.max_num_batched_tokens, engine.vllm, engine.compute_capability
    )


def cudagraph_bytes(variant: Variant, engine: Engine, layers: int | None = None, cal: Calibration = CALIBRATION) -> int:
    """Memory of the captured CUDA graphs (allocated once the KV cache exists)."""
    if engine.enforce_eager:
        return 0
    layers = variant.spec.num_hidden_layers if layers is None else layers
    measured = cal.offsets_for(variant.name, engine.tensor_parallel_size).cudagraph_ratio
    return int(_graph_pool_bytes(variant, engine, layers, cal) * measured)


def _graph_pool_bytes(variant: Variant, engine: Engine, layers: int, cal: Calibration) -> float:
    sharded = engine.tensor_parallel_size > 1
    if variant.spec.is_moe:  # measured on the V1 runner as its estimate × a ratio
        over = cal.moe_graph_actual_over_estimate_distributed if sharded else cal.moe_graph_actual_over_estimate
        return int(_v1_graph_estimate_bytes(variant, engine, layers, cal)) * over
    n = len(capture_sizes(engine))
    if sharded:
        int4 = variant.spec.quantization is not None and variant.spec.quantization.bits == 4
        pool = cal.graph_distributed_base_bytes + layers * n * cal.graph_distributed_per_layer_per_size
        return pool * (cal.graph_int4_factor if int4 else 1.0)
    return layers * (cal.graph_per_size_per_layer * n + cal.graph_per_seq_per_layer * engine.max_num_seqs)


def cudagraph_estimate_bytes(
    variant: Variant, engine: Engine, layers: int | None = None, cal: Calibration = CALIBRATION
) -> int:
    """The graph memory vLLM takes out of the KV budget: the V1 runner's estimate; from 0.29 the
    V2 runner's, which captures the graphs to measure them (taken as the pool itself)."""
    if engine.enforce_eager:
        return 0
    layers = variant.spec.num_hidden_layers if layers is None else layers
    if runs_v1_model_runner(variant, engine.vllm):
        return int(_v1_graph_estimate_bytes(variant, engine, layers, cal))
    return cudagraph_bytes(variant, engine, layers, cal) if engine.vllm.v2_graphs_in_budget else 0


def _v1_graph_estimate_bytes(variant: Variant, engine: Engine, layers: int, cal: Calibration) -> float:
    """The V1 runner's estimate: per layer, a piecewise graph per capture size and a FULL
    decode graph per size up to max_num_seqs."""
    sizes = capture_sizes(engine)
    full = [x for x in sizes if x <= engine.max_num_seqs]  # FULL graphs serve uniform decode batches
    per_layer = cal.moe_graph_estimate_per_layer_piecewise * len(sizes)
    per_layer += cal.moe_graph_estimate_per_layer_full * len(full)
    sharded = engine.tensor_parallel_size > 1
    return layers * per_layer * (cal.moe_graph_estimate_distributed_factor if sharded else 1.0)


def cudagraph_on_top_bytes(
    variant: Variant, engine: Engine, layers: int | None = None, cal: Calibration = CALIBRATION
) -> int:
    """The part of the graph pool allocated beyond the KV budget (counts against free memory)."""
    return cudagraph_bytes(variant, engine, layers, cal) - cudagraph_estimate_bytes(variant, engine, layers, cal)


def non_torch_bytes(variant: Variant, engine: Engine, cal: Calibration = CALIBRATION, samples: bool = True) -> int:
    """vLLM's non-torch increase between its start snapshot and the end of the profile run;
    from 0.27 with the runner's per-request buffers (what vLLM counts as consumed beyond the
    weights). `samples`: the rank runs the sampler (the last pipeline stage)."""
    moe = variant.spec.is_moe
    if distributed(engine):
        base = cal.non_torch_distributed_moe_bytes if moe else cal.non_torch_distributed_bytes
    else:
        base = cal.non_torch_moe_bytes if moe else cal.non_torch_bytes
    buffers = runner_buffer_bytes(variant, engine) if samples else 0
    return max(0, base + cal.offsets_for(variant.name, engine.tensor_parallel_size).non_torch_bytes + buffers)


def runner_buffer_bytes(variant: Variant, engine: Engine) -> int:
    """The V2 runner's per-request sampler buffers, taken from the KV budget from vLLM 0.27: penalty
    counts (max_num_seqs × vocab int32), the prompt bit mask and the grammar bit mask
    (max_num_seqs × ceil(vocab / 32) int32 each); Qwen3's vocabulary: 645,728 B a sequence."""
    if not engine.vllm.runner_buffers_in_budget or runs_v1_model_runner(variant, engine.vllm):
        return 0
    vocab = variant.spec.vocab_size
    return engine.max_num_seqs * (vocab + 2 * math.ceil(vocab / 32)) * 4


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
    cudagraph_in_budget_bytes: int = 0  # the graph estimate vLLM takes from the KV budget
    distributed_init_bytes: int = 0  # communicators, before vLLM's start snapshot (TP/PP > 1)

    @property
    def cudagraph_on_top_bytes(self) -> int:
        return max(0, self.cudagraph_bytes - self.cudagraph_in_budget_bytes)

    @property
    def held_before_start_bytes(self) -> int:
        """What a rank holds when vLLM checks free memory: CUDA context + communicators."""
        return self.cuda_context_bytes + self.distributed_init_bytes

    @property
    def footprint_bytes(self) -> int:
        """What the vLLM process holds on this GPU once started (held + requested + graphs)."""
        return self.held_before_start_bytes + self.requested_bytes + self.cudagraph_on_top_bytes


def requested_bytes(total_bytes: int, gpu_memory_utilization: float) -> int:
    return math.ceil(total_bytes * gpu_memory_utilization)


def breakdown(
    variant: Variant,
    total_bytes: int,
    gpu_memory_utilization: float,
    engine: Engine,
    span: Span = WHOLE_MODEL,
    cal: Calibration = CALIBRATION,
) -> MemoryBreakdown:
    """One GPU's budget: what vLLM requests, what it subtracts, and the KV cache that is left."""
    requested = requested_bytes(total_bytes, gpu_memory_utilization)
    weights = weight_bytes(variant, engine, span, cal)
    act = activation_bytes(variant, engine, cal, samples=span.samples)
    non_torch = non_torch_bytes(variant, engine, cal, samples=span.samples)
    graphs = cudagraph_bytes(variant, engine, span.layers, cal)
    in_budget = cudagraph_estimate_bytes(variant, engine, span.layers, cal)
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
        distributed_init_bytes=init_bytes(variant, engine, cal),
    )


def after_capture_bytes(activation: int, margin_bytes: int) -> int:
    """Room vLLM needs beyond its budget once the graphs are captured.

    `capture_model` empties torch's cache, so the kernel warm-up (logits gathered across ranks,
    sampler sorts) and the first requests grow the cache again past the budget: 728,719,360 B
    for Qwen3-32B at TP 2 (cold-profile activation 960,500,224 B); gmu 0.981 ran out of memory at
    the first request. The activation peak stands in for that growth; never below the margin.
    """
    return max(activation, margin_bytes)


def max_utilization(total_bytes: int, free_bytes: int, outside_budget_bytes: int) -> float:
    """Largest gpu_memory_utilization whose whole start and first requests fit in free memory.

    outside_budget_bytes: everything vLLM holds beyond ceil(total × gmu) (the CUDA context, the
    communicators, the CUDA graphs on top, the growth after capture).
    """
    usable = free_bytes - outside_budget_bytes
    return math.floor(max(0, usable) / total_bytes * 1000) / 1000
