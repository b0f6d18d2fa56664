"""The chosen candidate as a `Plan`: every setting with its reason, and the notes. Pure."""

from __future__ import annotations

from dataclasses import replace

from qwdeploy.planning.candidate import FREE_MEMORY_MARGIN_BYTES, Candidate, Goal
from qwdeploy.planning.context import context_ceiling
from qwdeploy.planning.distributed import MEASURED_TP
from qwdeploy.planning.kv import BLOCK_SIZE, kv_bytes_per_token
from qwdeploy.planning.memory import MemoryBreakdown, runner_buffer_bytes, runs_v1_model_runner
from qwdeploy.planning.plan import Alternative, Choice, Plan
from qwdeploy.planning.provenance import checkpoint_notes
from qwdeploy.planning.stages import RAY_EXECUTOR, RAY_PORT, Stage
from qwdeploy.planning.startup import deep_gemm_runs
from qwdeploy.planning.versions import VLLM_VERSION
from qwdeploy.units import GiB, MiB

CLI = "set on the command line"
FLASHINFER_WORKSPACE_BYTES = 394 * MiB  # vLLM 0.26 VLLM_FLASHINFER_WORKSPACE_BUFFER_SIZE default


def to_plan(c: Candidate, goal: Goal, local: bool, alternatives: tuple[Alternative, ...], gpus_per_node: int) -> Plan:
    notes = _verdict_notes(c, goal)
    notes += checkpoint_notes(c.variant, c.gpus[0], c.tp, c.memory.weights_bytes)
    notes += _stage_notes(c, gpus_per_node, alternatives, goal.vllm.version) if c.pp > 1 else _gpu_notes(c, goal, local)
    if c.pp == 1 and c.tp < gpus_per_node:
        notes.append(_idle_note(c, goal, gpus_per_node, alternatives))
    gpus = c.gpus if c.pp == 1 else tuple(replace(c.gpus[0], index=i % c.tp) for i in range(c.tp * c.pp))
    return Plan(
        variant=c.variant,
        profile=goal.profile,
        gpus=gpus,
        tensor_parallel_size=c.tp,
        pipeline_parallel_size=c.pp,
        max_model_len=c.max_model_len,
        gpu_memory_utilization=c.gmu,
        kv_cache_dtype=c.kv_cache_dtype,
        max_num_seqs=c.mns,
        max_num_batched_tokens=c.mnbt,
        enforce_eager=c.eager,
        enable_prefix_caching=goal.profile.enable_prefix_caching,
        rope_scaling=c.rope_scaling,
        memory=c.memory,
        capacity=c.capacity,
        fits=c.fits,
        local=local,
        choices=tuple(reasons(c, goal)),
        notes=tuple(notes),
        alternatives=alternatives,
        meets_profile=c.meets_profile,
        profile_misses=c.misses,
        stages=c.stages,
        gpu_memory_utilization_max=c.gmu_cap,
        vllm=goal.vllm,
    )


def _verdict_notes(c: Candidate, goal: Goal) -> list[str]:
    if c.refusal:
        return ["Does not fit: " + c.refusal + "."]
    if not c.meets_profile:
        return [f"Fits, but misses the {goal.profile.name} profile: {'; '.join(c.misses)}. See the alternatives."]
    return []


def _idle_note(c: Candidate, goal: Goal, gpus: int, alternatives: tuple[Alternative, ...]) -> str:
    """Which GPUs the plan leaves idle, and what they could do."""
    idle, replicas = gpus - c.tp, gpus // c.tp
    uses = []
    if replicas > 1:
        uses.append(
            f"The other {idle} could run {replicas - 1} more replica(s) of it ({replicas} × the "
            f"concurrency: vLLM's --data-parallel-size {replicas})"
        )
    bigger = max((a.tensor_parallel_size for a in alternatives if a.pipeline_parallel_size == 1), default=0)
    if bigger > c.tp:
        uses.append(f"tensor parallel {bigger} would give more KV cache and faster decode (see the alternatives)")
    what = (" " + "; ".join(uses) + ".") if uses else ""
    return f"Uses {c.tp} of the {gpus} GPUs ({_why_this_many(c, goal)}).{what}"


def _why_this_many(c: Candidate, goal: Goal) -> str:
    if goal.pins.tensor_parallel_size:
        return "--tensor-parallel-size"
    if not c.meets_profile:
        return "the candidate closest to the profile"
    if goal.profile.tensor_parallel == "most":
        return f"the largest tensor parallel size {c.variant.name} accepts"
    return f"the fewest that meet the {goal.profile.name} profile"


def _gpu_notes(c: Candidate, goal: Goal, local: bool) -> list[str]:
    notes = [
        f"GPU {g.index}: other processes hold {_gib(g.other_processes_bytes)}; "
        f"gpu_memory_utilization is capped at {c.gmu_cap:g} so vLLM's start check passes."
        for g in c.gpus
        if g.other_processes_bytes
    ]
    if not local:
        notes += _estimated_total_note(c)
    notes += _weights_notes(c)
    notes += _kv_notes(c)
    notes += _tensor_parallel_notes(c)
    notes += _version_notes(c, goal.vllm.version)
    if not c.eager and not goal.pins.compile_cache_warm:
        notes.append(
            "KV figures assume a first start: a restart with a warm compile cache skips "
            "torch.compile's memory peak and gets a little more KV cache (--compile-cache warm)."
        )
    return notes


def _version_notes(c: Candidate, version: str) -> list[str]:
    """Where this vLLM puts the CUDA graphs and the runner's buffers (qwdeploy.planning.versions)."""
    m, notes = c.memory, []
    if m.cudagraph_in_budget_bytes and runs_v1_model_runner(c.variant, c.engine.vllm):
        notes.append(
            f"Qwen3-MoE runs on vLLM {version}'s V1 model runner: its CUDA-graph "
            f"estimate ({_gib(m.cudagraph_in_budget_bytes)}) comes out of the KV budget, "
            f"the rest of the graph pool ({_gib(m.cudagraph_on_top_bytes)}) on top."
        )
    elif m.cudagraph_in_budget_bytes:
        notes.append(
            f"vLLM {version} captures the CUDA graphs while profiling and takes them "
            f"({_gib(m.cudagraph_in_budget_bytes)}) out of the KV budget."
        )
    elif m.cudagraph_bytes:
        notes.append(
            f"CUDA graphs ({_gib(m.cudagraph_bytes)}) are allocated on top of "
            f"gpu_memory_utilization × total in vLLM {version}."
        )
    buffers = runner_buffer_bytes(c.variant, c.engine)
    if buffers:
        notes.append(
            f"vLLM {version} counts its sampler's per-request buffers ({c.mns} × "
            f"{buffers // c.mns:,} B = {_gib(buffers)}) in the KV budget (in non-torch here)."
        )
    return notes


def _estimated_total_note(c: Candidate) -> list[str]:
    gpu = c.gpus[0]
    if gpu.spec.total_source != "estimated":
        return []
    return [
        f"{gpu.name}: memory total estimated from the datasheet (not measured); "
        f"plan on the machine itself for exact figures."
    ]


def _weights_notes(c: Candidate) -> list[str]:
    gpu, notes = c.gpus[0], []
    if c.variant.weight_dtype == "fp8" and not gpu.spec.fp8_native:
        notes.append(
            f"{gpu.name} has no FP8 tensor cores: vLLM runs FP8 weights as "
            f"w8a16 through Marlin (memory savings, slower prefill)."
        )
    if deep_gemm_runs(c.variant, gpu.spec.compute_capability) and not c.eager:
        notes.append(
            "FP8 block-quantized checkpoints JIT-compile DeepGEMM kernels on a first start "
            "(during profiling and CUDA-graph capture, even with VLLM_DEEP_GEMM_WARMUP=skip: "
            "minutes); `qwdeploy warm` and serve keep them in a persistent cache."
        )
    return notes


def _kv_notes(c: Candidate) -> list[str]:
    """Where vLLM runs an fp8 KV cache through FlashInfer (every CUDA GPU of SM80+ but Hopper,
    whose FlashAttention 3 reads fp8 KV): its workspace is allocated beside the KV cache."""
    cc = c.placement.smallest.spec.compute_capability
    if not c.kv_cache_dtype.startswith("fp8") or cc < (8, 0) or cc[0] == 9:
        return []
    s = c.variant.spec
    workspace = max(FLASHINFER_WORKSPACE_BYTES, c.mnbt * (s.num_attention_heads // c.tp) * s.head_dim * 16)
    return [
        f"vLLM {VLLM_VERSION} runs an fp8 KV cache on {c.gpus[0].name} (compute capability "
        f"{cc[0]}.{cc[1]}) through FlashInfer, not FlashAttention; FlashInfer's workspace "
        f"({workspace / MiB:.0f} MiB, not measured) comes on top of these figures."
    ]


def _tensor_parallel_notes(c: Candidate) -> list[str]:
    m = c.memory
    if c.tp <= MEASURED_TP:
        return []
    return [
        f"Tensor parallel {c.tp} was not measured (TP 2 was, on 2 × H200): the communicators' "
        f"{_gib(m.distributed_init_bytes)} per GPU are the TP 2 figure with a 50 % allowance on NCCL's "
        f"part, and the CUDA graphs keep their TP 2 size; `qwdeploy serve` records what vLLM really takes."
    ]


def _stage_notes(c: Candidate, gpus_per_node: int, alternatives: tuple[Alternative, ...], version: str) -> list[str]:
    tight = c.tight
    notes = [_stage_note(s) for s in c.stages]
    fewer = next((a for a in alternatives if a.pipeline_parallel_size < c.pp and a.meets_profile), None)
    if fewer is not None:
        one = fewer.pipeline_parallel_size == 1
        nodes = "One node" if one else f"{fewer.pipeline_parallel_size} nodes"
        notes.append(
            f"{nodes} of {c.tp} × {c.gpus[0].name} already {'meets' if one else 'meet'} the profile: "
            f"{fewer.max_concurrency:.1f} sequences of {fewer.max_model_len} tokens (see the alternatives); "
            f"{c.pp} nodes hold {c.capacity.max_concurrency:.1f} sequences but need Ray and pipeline stages."
        )
    notes.append(
        f"vLLM keeps the smallest KV cache of all stages: stage {tight.index} "
        f"({tight.capacity.num_blocks:,} blocks of {BLOCK_SIZE} tokens) sizes every "
        f"worker; the memory table shows that stage."
    )
    if c.tp < gpus_per_node:
        notes.append(
            f"Uses {c.tp} of the {gpus_per_node} GPUs of each node: {c.variant.name} "
            f"accepts no larger tensor parallel size."
        )
    notes.append(
        f"Multi-node: vLLM runs on Ray ({RAY_EXECUTOR} executor). Start `ray start --head "
        f"--port {RAY_PORT}` on the head node, `ray start --address HEAD:{RAY_PORT}` on the "
        f"other {c.pp - 1}, then vllm serve on the head; every node needs the model files "
        f"in the same cache path."
    )
    notes += _estimated_total_note(c)
    graphs = tight.memory.cudagraph_bytes
    v2_in_budget = tight.memory.cudagraph_in_budget_bytes and not runs_v1_model_runner(c.variant, c.engine.vllm)
    where = "taken out of the KV budget" if v2_in_budget else "allocated on top of gpu_memory_utilization × total"
    notes.append(f"CUDA graphs ({_gib(graphs)} on stage {tight.index}) are {where} in vLLM {version}.")
    return notes


def _stage_note(s: Stage) -> str:
    m = s.memory
    parts = [f"layers {s.start_layer}-{s.end_layer - 1} ({s.layers})"]
    if s.embedding:
        parts.append("embedding")
    if s.lm_head:
        parts.append("lm_head")
    return (
        f"Stage {s.index} (node {s.index}): {', '.join(parts)}; per GPU: weights "
        f"{_gib(m.weights_bytes)}, activation {_gib(m.activation_bytes)}, non-torch "
        f"{_gib(m.non_torch_bytes)}, KV cache {_gib(max(0, m.kv_cache_bytes))} = requested "
        f"{_gib(m.requested_bytes)}; {s.capacity.num_blocks:,} KV blocks."
    )


# ---- reasons, one per setting -------------------------------------------------------------


def reasons(c: Candidate, goal: Goal) -> list[Choice]:
    out = [_model_reason(c, goal), _tp_reason(c, goal)]
    if c.pp > 1:
        out += _pipeline_reasons(c)
    out.append(_context_reason(c, goal))
    if c.rope_scaling:
        out.append(
            Choice(
                "hf_overrides",
                f"YaRN factor {c.rope_scaling['factor']:g}",
                f"Qwen's YaRN setting: {c.max_model_len} tokens exceed the native "
                f"{c.variant.spec.max_position_embeddings}",
            )
        )
    return out + _engine_reasons(c, goal)


def _model_reason(c: Candidate, goal: Goal) -> Choice:
    v, p = c.variant, goal.profile
    where = f"at TP {c.tp}" if c.pp == 1 else f"on stage {c.tight.index}"
    why = "the weights asked for" if goal.weights_chosen else f"profile {p.name} prefers {', '.join(p.weights)}"
    return Choice("model", v.name, f"{v.weight_dtype} weights ({_gib(c.memory.weights_bytes)} per GPU {where}); {why}")


def _tp_reason(c: Candidate, goal: Goal) -> Choice:
    if goal.pins.tensor_parallel_size:
        return Choice("tensor_parallel_size", c.tp, CLI)
    if c.pp > 1:
        policy = "the largest size vLLM accepts within a node"
    elif goal.profile.tensor_parallel == "most":
        policy = "every suitable GPU: decode speed grows with the bandwidth of more GPUs"
    else:
        policy = "the fewest GPUs that meet the profile"
    spec = c.variant.spec
    heads = f"{spec.num_attention_heads} heads and {spec.num_key_value_heads} KV heads allow it"
    return Choice("tensor_parallel_size", c.tp, f"{policy}; {heads}")


def _pipeline_reasons(c: Candidate) -> list[Choice]:
    layers = "/".join(str(s.layers) for s in c.stages)
    return [
        Choice(
            "pipeline_parallel_size",
            c.pp,
            f"one stage per node; vLLM splits the {c.variant.spec.num_hidden_layers} layers {layers}",
        ),
        Choice(
            "distributed_executor_backend",
            RAY_EXECUTOR,
            "vLLM's multi-node executor: one Ray cluster, workers on every node",
        ),
    ]


def _context_reason(c: Candidate, goal: Goal) -> Choice:
    profile = goal.profile
    if goal.pins.max_model_len:
        return Choice("max_model_len", c.max_model_len, CLI)
    if c.max_model_len >= profile.max_model_len or c.max_model_len >= context_ceiling(c.variant, profile.allow_yarn):
        why = (
            f"the profile's target; the KV cache holds {c.capacity.max_concurrency:.1f} such "
            f"sequences (at least {profile.min_concurrency} wanted)"
        )
    elif c.capacity.max_concurrency >= profile.min_concurrency:
        why = (
            f"the longest that keeps {profile.min_concurrency} full-length sequences in "
            f"the KV cache (profile target {profile.max_model_len})"
        )
    else:
        why = (
            f"the longest that fits one sequence (profile target {profile.max_model_len}): "
            f"{profile.min_concurrency} fit only below the profile's shortest context, {profile.min_max_model_len}"
        )
    return Choice("max_model_len", c.max_model_len, why)


def _engine_reasons(c: Candidate, goal: Goal) -> list[Choice]:
    pins, p, m = goal.pins, goal.profile.name, c.memory
    gmu = (
        CLI
        if pins.gpu_memory_utilization
        else f"profile {p}; the most these GPUs allow is {c.gmu_cap:g} (free memory less vLLM's "
        f"CUDA context{_communicators(m)}, {_gib(m.cudagraph_on_top_bytes)} of CUDA graphs on top and "
        f"{_gib(max(m.activation_bytes, FREE_MEMORY_MARGIN_BYTES))} for the warm-up after graph capture)"
    )
    kv = (
        CLI
        if pins.kv_cache_dtype
        else "model dtype"
        if c.kv_cache_dtype == "auto"
        else "fp8 halves KV bytes per token (the GPU supports it)"
    )
    per_token = kv_bytes_per_token(c.variant.spec, c.kv_cache_dtype, c.tp, c.tight.layers)
    stage = f" on stage {c.tight.index}" if c.pp > 1 else ""
    eager = (
        CLI
        if pins.enforce_eager is not None
        else f"profile {p}"
        if c.eager
        else ("CUDA graphs decode several times faster")
    )
    return [
        Choice("gpu_memory_utilization", c.gmu, gmu),
        Choice("kv_cache_dtype", c.kv_cache_dtype, f"{kv}; {per_token:,} bytes per token per GPU{stage}"),
        Choice("max_num_seqs", c.mns, CLI if pins.max_num_seqs else f"profile {p}; also sets the CUDA-graph sizes"),
        Choice(
            "max_num_batched_tokens",
            c.mnbt,
            CLI
            if pins.max_num_batched_tokens
            else f"profile {p}; prefill chunk size, sets the activation peak ({_gib(m.activation_bytes)})",
        ),
        Choice("enforce_eager", c.eager, eager),
        Choice("enable_prefix_caching", goal.profile.enable_prefix_caching, f"profile {p}"),
    ]


def _communicators(m: MemoryBreakdown) -> str:
    return f", {_gib(m.distributed_init_bytes)} of communicators" if m.distributed_init_bytes else ""


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"
