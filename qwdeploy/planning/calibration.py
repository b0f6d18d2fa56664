"""The overhead constants of the memory model, fitted on real vLLM 0.26.0 runs. Pure data.

Everything else in the memory model (qwdeploy.planning.weights, .kv, .memory) is exact arithmetic
from config.json; these are the terms it cannot derive. `python bench/fit_activation.py` refits
them; `qwdeploy.planning.correction` moves them by what `qwdeploy serve` recorded on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from qwdeploy.units import GiB, MiB


@dataclass(frozen=True)
class Offsets:
    """What `qwdeploy serve` measured beyond the default model (qwdeploy.planning.correction),
    for one model (None: any) at one tensor-parallel size (None: any)."""

    model: str | None = None
    tensor_parallel_size: int | None = None
    # peak activation, bytes per batched token, added to the peak: a start that compiles
    # (cold torch.compile cache) and one that does not (warm cache, eager); None: not measured
    activation_per_token_compiling: float | None = None
    activation_per_token: float | None = None
    non_torch_bytes: int = 0
    weights_bytes: int = 0  # only for one model at one TP (what the allocator adds is per shape)
    cudagraph_ratio: float = 1.0

    def activation_per_token_for(self, compiles: bool) -> float:
        first, other = (
            (self.activation_per_token_compiling, self.activation_per_token)
            if compiles
            else (self.activation_per_token, self.activation_per_token_compiling)
        )
        return first if first is not None else other or 0.0


NO_OFFSETS = Offsets()


@dataclass(frozen=True)
class Calibration:
    """Overheads measured on real vLLM 0.26.0 on an H100 80GB (runs in tests/data/vllm_runs and
    tests/data/vllm_runs/h100; `python bench/fit_activation.py` refits them). Everything else in this
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
    # At TP > 1 Inductor compiles the per-rank shapes: × compile_tp_factor / TP (2 × H200, TP 2:
    # 8B 702.6 / 752.9 MB at mnbt 2048 / 8192, 14B 924.9, 32B 960.5, 32B-AWQ 926.9 MB, all
    # within 3 % of 0.55 × the TP 1 term).
    compile_tp_factor: float = 1.1
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
    # They do not shrink with TP (30B-A3B: 1,230,865,408 B at TP 1 and at TP 2).
    moe_workspace_factor: float = 1.0
    # Non-torch memory after vLLM's start snapshot (cuBLAS workspaces, attention buffers):
    # 241,172,480 B in every dense TP=1 H100 run, 257,949,696 B for Qwen3-MoE (V1 runner).
    non_torch_bytes: int = 241_172_480
    non_torch_moe_bytes: int = 257_949_696
    # With communicators (TP 2 on 2 × H200, every dense run / the MoE run) the increase is
    # smaller: part of what the first kernels take lazily is taken while NCCL sets up, before
    # the snapshot. The communicators themselves are in qwdeploy.planning.distributed.
    non_torch_distributed_bytes: int = 71_303_168
    non_torch_distributed_moe_bytes: int = 117_440_512
    # What the distributed set-up holds before the snapshot (qwdeploy.planning.distributed),
    # per rank, TP 2 on 2 × H200: 1,088,421,888 B dense = first use + one communicator +
    # custom all-reduce + symmetric memory + torch's reserve; Qwen3-MoE's `ep` group adds one
    # more communicator (1,598,029,824 B). "First use" is the rest, not separable in these runs.
    nccl_communicator_bytes: int = 509_607_936
    nccl_first_use_bytes: int = 463_468_032
    custom_allreduce_bytes: int = 3 * 8 * MiB + 2560  # meta + buffer (cudaMalloc), rank_data
    distributed_torch_reserved_bytes: int = 23_068_672
    # TP 4 and 8 were not measured: NCCL's part gets this allowance (a guess; rings keep two
    # peers a channel at any size, trees and NVSwitch systems use more channels).
    nccl_unmeasured_allowance: float = 1.5
    # The CUDA context vLLM holds before it reads free memory: 552,402,944 B on the H100
    # (total 85,017,493,504 − free 84,465,090,560 at vLLM's start snapshot).
    cuda_context_bytes: int = 552_402_944
    # CUDA-graph pool (allocated on top of the KV budget by the V2 runner of dense models), per
    # layer: graph_per_size × capture sizes + graph_per_seq × max_num_seqs. Least squares over
    # 16 H100 runs (0.23-1.88 GiB); largest miss 0.16 GiB (14B).
    graph_per_size_per_layer: float = 2.6708e-4 * GiB
    graph_per_seq_per_layer: float = 1.488e-5 * GiB
    # At TP > 1: a fixed part + per layer per capture size, least squares (relative) over the
    # dense TP 2 runs on 2 × H200: 8B 580.9, 14B 648.0, 32B 931.1 MB at 51 sizes, 32B 203.4 MB at
    # 7 sizes (misses -2.4 % to +3.3 %). Int4 (AWQ/GPTQ through Machete) 1.08 × (32B-AWQ 1,040 MB).
    graph_distributed_base_bytes: float = 84_259_748
    graph_distributed_per_layer_per_size: float = 268_860
    graph_int4_factor: float = 1.08
    # The V1 runner (Qwen3-MoE) estimates its graphs and takes the estimate out of the KV budget:
    # per layer, a piecewise graph size (capture sizes up to min(2 × max_num_seqs, 512, mnbt))
    # and a FULL decode graph size (those up to max_num_seqs). 30B-A3B, 48 layers: 526,385,152 B
    # at 51 + 35 sizes (mns 256), 689,963,008 B at 51 + 51 (mns 512). The real pool came out
    # 1.25-1.33 × the estimate (0.63-0.80 GiB).
    moe_graph_estimate_per_layer_full: float = (689_963_008 - 526_385_152) / 48 / 16  # 212,992
    moe_graph_estimate_per_layer_piecewise: float = (526_385_152 / 48 - 35 * 212_992) / 51
    moe_graph_actual_over_estimate: float = 1.33
    # TP 2 (30B-A3B, 2 × H200): vLLM's estimate came out 566,231,040 B (1.076 × the TP 1 form)
    # and the pool 608,174,080 B (1.074 × the estimate).
    moe_graph_estimate_distributed_factor: float = 566_231_040 / 526_385_152
    moe_graph_actual_over_estimate_distributed: float = 608_174_080 / 566_231_040
    # Per-layer allocations beside the parameters as torch's allocator counts them
    # (qwdeploy.planning.allocator): FP8 (weights or KV) ~1 MiB a layer (8B fp8 KV +35.7 MB,
    # 32B-FP8 +68 MB); int4 through Machete on Hopper 0.089 × hidden² bytes a layer, least squares
    # over 4B/8B/14B/32B-AWQ on the H100 and 32B-AWQ at TP 2 on 2 × H200 (all within 0.21 % but
    # 4B-AWQ, -0.66 %): what the re-layout after loading leaves in the allocator.
    fp8_extra_per_layer: int = 1 * MiB
    machete_extra_per_hidden_sq: float = 0.089
    # What this machine's `qwdeploy serve` records measured (qwdeploy.planning.correction),
    # and how many recorded starts that is.
    offsets: tuple[Offsets, ...] = ()
    recorded_starts: int = 0

    def offsets_for(self, model: str, tensor_parallel_size: int) -> Offsets:
        """The closest measured offsets: this model at this TP, any model at this TP, this
        model at any TP, any model at any TP; none without records."""
        for want in ((model, tensor_parallel_size), (None, tensor_parallel_size), (model, None), (None, None)):
            for o in self.offsets:
                if (o.model, o.tensor_parallel_size) == want:
                    return o
        return NO_OFFSETS


CALIBRATION = Calibration()
