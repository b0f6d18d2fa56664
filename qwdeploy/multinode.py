"""Plans across nodes: tensor parallel inside a node, pipeline parallel across nodes, on Ray.

Pure (no I/O): GPUs are named, every node is assumed alike. The layout is vLLM's own multi-node
path, not a home-made one: one vLLM process on the head node with
`--distributed-executor-backend ray`, one Ray worker per node, `tensor_parallel_size` = the GPUs
of a node used, `pipeline_parallel_size` = nodes.

Memory per pipeline stage (vLLM 0.26):
  * layers: `vllm.distributed.utils.get_pp_indices` splits them evenly; the remainder goes to
    the stages before the last, starting from the second-to-last (`partition_layers`).
  * dense Qwen3 (`qwen2.py`/`qwen3.py`): embed_tokens on the first stage (and on the last when
    tied: it is the lm_head), final norm and lm_head on the last (memory.weight_bytes).
  * Qwen3-MoE (`qwen3_moe.py`): embed_tokens, the final norm and lm_head are built on EVERY
    stage (no PPMissingLayer there), so every stage holds both vocab matrices.
  * each stage's KV budget is computed like a single GPU's, for its own layers; the engine
    keeps the smallest block count over all workers (kv_cache_utils, min over workers).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, replace
from typing import Sequence

from qwdeploy import hardware, memory, planner
from qwdeploy.catalog import Variant
from qwdeploy.errors import QwdeployError
from qwdeploy.hardware import Gpu
from qwdeploy.memory import GiB, KvCapacity, MemoryBreakdown
from qwdeploy.planner import Alternative, Choice, Pins, Plan
from qwdeploy.profiles import Profile

RAY_PORT = 6379  # `ray start --head` default GCS port
EXECUTOR = "ray"  # vLLM's --distributed-executor-backend for more than one node


# ------------------------------------------------------------------------------------------
# Layers per stage, as vLLM splits them


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

    def to_json(self) -> dict:
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


def stage_memory(
    variant: Variant,
    total_bytes: int,
    gpu_memory_utilization: float,
    tp: int,
    pp: int,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    enforce_eager: bool,
    rope_max_position: int | None,
    kv_cache_dtype: str,
    max_model_len: int,
) -> tuple[Stage, ...]:
    """Every stage's per-GPU budget (memory.breakdown for its layers) and KV capacity."""
    s = variant.spec
    stages = []
    for i, (start, end) in enumerate(layer_ranges(s.num_hidden_layers, pp)):
        first, last = i == 0, i == pp - 1
        b = memory.breakdown(
            variant,
            total_bytes,
            gpu_memory_utilization,
            tp,
            max_num_batched_tokens,
            max_num_seqs,
            enforce_eager,
            rope_max_position,
            layers=end - start,
            first_stage=first,
            last_stage=last,
        )
        embedding, lm_head = first or (last and s.tie_word_embeddings), last
        if s.is_moe:  # qwen3_moe.py builds embed_tokens, norm and lm_head on every rank
            weights = memory.weight_bytes(variant, tp, rope_max_position, end - start, True, True)
            b = replace(
                b,
                weights_bytes=weights,
                kv_cache_bytes=b.requested_bytes - weights - b.activation_bytes - b.non_torch_bytes,
            )
            embedding = lm_head = True
        cap = memory.kv_capacity(b.kv_cache_bytes, s, kv_cache_dtype, tp, max_model_len, layers=end - start)
        stages.append(Stage(i, start, end, embedding, lm_head, b, cap))
    return tuple(stages)


def tightest(stages: Sequence[Stage]) -> Stage:
    """The stage with the fewest KV blocks: vLLM sizes every worker's cache to it."""
    return min(stages, key=lambda st: (st.capacity.num_blocks, -st.index))


def stages(plan: Plan) -> tuple[Stage, ...]:
    """The stages of a plan (one, for a single-node plan), recomputed from its settings."""
    rope_max = (
        int(plan.rope_scaling["original_max_position_embeddings"] * plan.rope_scaling["factor"])
        if plan.rope_scaling
        else None
    )
    return stage_memory(
        plan.variant,
        plan.gpu.total_bytes,
        plan.gpu_memory_utilization,
        plan.tensor_parallel_size,
        plan.pipeline_parallel_size,
        plan.max_num_batched_tokens,
        plan.max_num_seqs,
        plan.enforce_eager,
        rope_max,
        plan.kv_cache_dtype,
        plan.max_model_len,
    )


# ------------------------------------------------------------------------------------------
# Layouts vLLM accepts


def layout_problem(variant: Variant, tp: int, pp: int, gpus_per_node: int) -> str | None:
    """Why this TP × PP layout would be refused (by vLLM, or by us for TP across nodes)."""
    problem = memory.tp_problem(variant, tp)
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


def _tp_for(variant: Variant, gpus_per_node: int, pinned: int | None, pp: int) -> int:
    """TP: the pinned size, else the largest size vLLM accepts that fits in a node."""
    if pinned:
        problem = layout_problem(variant, pinned, pp, gpus_per_node)
        if problem:
            raise QwdeployError(
                f"--tensor-parallel-size {pinned} does not work for {variant.name} on {pp} nodes: {problem}",
                hint="valid sizes: " + ", ".join(map(str, memory.valid_tp_sizes(variant, gpus_per_node))),
            )
        return pinned
    sizes = memory.valid_tp_sizes(variant, gpus_per_node)
    if not sizes:
        raise QwdeployError(f"no tensor parallel size of {variant.name} fits {gpus_per_node} GPUs")
    return sizes[-1]


# ------------------------------------------------------------------------------------------
# Evaluating one layout (the multi-stage counterpart of planner._evaluate)


@dataclass(frozen=True)
class _Candidate:
    variant: Variant
    kv_cache_dtype: str
    tp: int
    pp: int
    gpu: Gpu
    gmu: float
    gmu_cap: float
    mnbt: int
    mns: int
    eager: bool
    max_model_len: int
    rope_scaling: dict | None
    stages: tuple[Stage, ...]
    capacity: KvCapacity
    fits: bool
    meets_profile: bool
    refusal: str | None

    @property
    def tight(self) -> Stage:
        return tightest(self.stages)


def _rope_max(rope: dict | None) -> int | None:
    return int(rope["original_max_position_embeddings"] * rope["factor"]) if rope else None


def _evaluate(variant: Variant, kv: str, tp: int, pp: int, gpu: Gpu, profile: Profile, pins: Pins) -> _Candidate:
    mns = pins.max_num_seqs or profile.max_num_seqs
    mnbt = pins.max_num_batched_tokens or max(profile.max_num_batched_tokens, mns)
    eager = profile.enforce_eager if pins.enforce_eager is None else pins.enforce_eager
    ceiling = planner._context_ceiling(variant, profile.allow_yarn or bool(pins.max_model_len))
    target = pins.max_model_len or min(profile.max_model_len, ceiling)
    rope = planner._rope_for(variant, target)
    most_layers = max(partition_layers(variant.spec.num_hidden_layers, pp))
    graphs = memory.cudagraph_bytes(variant, mns, mnbt, eager, layers=most_layers)
    gmu_cap = memory.max_utilization(gpu.total_bytes, gpu.free_bytes, graphs, planner.FREE_MEMORY_MARGIN_BYTES)
    gmu = pins.gpu_memory_utilization or min(profile.gpu_memory_utilization, gmu_cap)

    def layout(rope_scaling: dict | None, mml: int) -> tuple[Stage, ...]:
        return stage_memory(
            variant,
            gpu.total_bytes,
            gmu,
            tp,
            pp,
            mnbt,
            mns,
            eager,
            _rope_max(rope_scaling),
            kv,
            mml,
        )

    st = layout(rope, target)
    if pins.max_model_len:
        mml = pins.max_model_len
    else:
        blocks = tightest(st).capacity.num_blocks
        mml = min(target, planner._round_context(blocks // profile.min_concurrency * memory.BLOCK_SIZE))
        if mml < target and rope and mml <= variant.spec.max_position_embeddings:
            rope = None  # the reduced context no longer needs YaRN
    mml = max(mml, memory.BLOCK_SIZE)
    st = layout(rope, mml)
    cap = tightest(st).capacity
    derived = planner._derived_context(variant, rope)
    cap = replace(cap, max_model_len_limit=min(cap.max_model_len_limit, max(derived, mml)))
    refusal = _refusal(variant, kv, tp, mml, rope, ceiling, pins, st, cap, gpu, gmu, graphs)
    meets = cap.max_concurrency >= profile.min_concurrency and mml >= min(target, profile.max_model_len)
    usable = pins.max_model_len is not None or mml >= min(profile.min_max_model_len, ceiling)
    return _Candidate(
        variant,
        kv,
        tp,
        pp,
        gpu,
        gmu,
        gmu_cap,
        mnbt,
        mns,
        eager,
        mml,
        rope,
        st,
        cap,
        fits=refusal is None and usable,
        meets_profile=meets and refusal is None,
        refusal=refusal,
    )


def _refusal(variant, kv, tp, mml, rope, ceiling, pins, st, cap, gpu, gmu, graphs) -> str | None:
    """Why vLLM would refuse to start (or die while starting) with this layout, or None."""
    derived = planner._derived_context(variant, rope)
    if mml > max(derived, ceiling):
        return (
            f"max_model_len {mml} is longer than the model's context ({max(derived, ceiling)}"
            f"{' with YaRN' if rope else ''}); vLLM refuses it"
        )
    for s in st:
        m = s.memory
        if m.kv_cache_bytes <= 0:
            return (
                f"stage {s.index} (layers {s.start_layer}-{s.end_layer - 1}): the weights "
                f"({_gib(m.weights_bytes)}) and overheads "
                f"({_gib(m.activation_bytes + m.non_torch_bytes)}) "
                f"leave no KV cache within gpu_memory_utilization {gmu:g} × {_gib(m.total_bytes)}"
            )
    blocks_needed = math.ceil(mml / memory.BLOCK_SIZE)
    if cap.num_blocks < blocks_needed:
        t = tightest(st)
        needed = blocks_needed * memory.BLOCK_SIZE * memory.kv_bytes_per_token(variant.spec, kv, tp, t.layers)
        return (
            f"one {mml}-token sequence needs {_gib(needed)} of KV cache on stage {t.index} but "
            f"only {_gib(t.memory.kv_cache_bytes)} is left; the longest that fits is "
            f"{cap.max_model_len_limit} (vLLM's estimated maximum model length)"
        )
    m = st[0].memory
    if pins.gpu_memory_utilization and m.requested_bytes > gpu.free_bytes - m.cuda_context_bytes:
        return (
            f"gpu_memory_utilization {gmu:g} asks for {_gib(m.requested_bytes)} but only "
            f"{_gib(gpu.free_bytes - m.cuda_context_bytes)} is free once vLLM's CUDA context "
            f"exists; vLLM refuses to start"
        )
    if m.requested_bytes + graphs + m.cuda_context_bytes > gpu.free_bytes:
        return (
            f"gpu_memory_utilization {gmu:g} plus CUDA graphs ({_gib(graphs)}) exceeds the "
            f"{_gib(gpu.free_bytes)} of a GPU: out of memory while capturing graphs"
        )
    return None


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


# ------------------------------------------------------------------------------------------
# The search


def plan(
    variants: Sequence[Variant],
    profile: Profile,
    gpu_name: str,
    nodes: int,
    gpus_per_node: int,
    pins: Pins = Pins(),
) -> Plan:
    """The configuration for `nodes` nodes of `gpus_per_node` × `gpu_name`: TP inside, PP across."""
    if nodes < 2:
        raise QwdeployError(
            "a multi-node plan needs at least 2 nodes",
            hint="for one node, plan without --nodes: --gpu NAME --num-gpus N",
        )
    if pins.max_num_seqs and pins.max_num_batched_tokens and pins.max_num_batched_tokens < pins.max_num_seqs:
        raise QwdeployError(
            "--max-num-batched-tokens must be at least --max-num-seqs",
            hint="vLLM refuses max_num_batched_tokens < max_num_seqs",
        )
    node_gpus = hardware.named(gpu_name, gpus_per_node)
    gpu = node_gpus[0]
    kv_options = planner._kv_options(profile, pins, node_gpus)
    candidates = []
    for v in variants:
        problem = layout_problem(v, 1, nodes, gpus_per_node)
        if problem:
            raise QwdeployError(
                f"{v.name} cannot be split over {nodes} nodes: {problem}",
                hint=f"use at most {v.spec.num_hidden_layers} nodes",
            )
        tp = _tp_for(v, gpus_per_node, pins.tensor_parallel_size, nodes)
        for kv in kv_options:
            candidates.append(_evaluate(v, kv, tp, nodes, gpu, profile, pins))
            if candidates[-1].meets_profile:
                break
        if candidates[-1].meets_profile:
            break
    best = next((c for c in candidates if c.meets_profile), None)
    if best is None:
        best = max(
            candidates,
            key=lambda c: (
                c.fits,
                c.max_model_len if c.fits else c.capacity.max_model_len_limit,
                c.capacity.max_concurrency,
            ),
        )
    alternatives = () if best.meets_profile else _alternatives(best, profile, pins, gpus_per_node)
    return _to_plan(best, profile, pins, gpus_per_node, alternatives)


def _alternatives(best: _Candidate, profile: Profile, pins: Pins, gpus_per_node: int) -> tuple[Alternative, ...]:
    loose = replace(pins, max_model_len=None)
    options: list[tuple[str, _Candidate]] = []
    if best.kv_cache_dtype == "auto" and best.gpu.spec.fp8_native:
        options.append(
            (
                "fp8 KV cache (halves KV bytes per token)",
                _evaluate(best.variant, "fp8", best.tp, best.pp, best.gpu, profile, loose),
            )
        )
    more = best.pp + 1
    if layout_problem(best.variant, best.tp, more, gpus_per_node) is None:
        c = _evaluate(best.variant, best.kv_cache_dtype, best.tp, more, best.gpu, profile, loose)
        options.append((f"{more} nodes (pipeline parallel {more})", c))
    limit = best.capacity.max_model_len_limit
    if limit >= memory.BLOCK_SIZE:
        shorter = replace(pins, max_model_len=planner._round_context(limit) or limit)
        c = _evaluate(best.variant, best.kv_cache_dtype, best.tp, best.pp, best.gpu, profile, shorter)
        options.append((f"max_model_len {c.max_model_len} (the longest that fits)", c))
    ranked = sorted(options, key=lambda o: (not o[1].fits, not o[1].meets_profile, o[1].pp))
    return tuple(
        Alternative(
            summary=s,
            model=c.variant.name,
            tensor_parallel_size=c.tp,
            kv_cache_dtype=c.kv_cache_dtype,
            max_model_len=c.max_model_len,
            kv_cache_tokens=c.capacity.tokens,
            max_concurrency=c.capacity.max_concurrency,
            fits=c.fits,
        )
        for s, c in ranked
    )


def _to_plan(
    c: _Candidate,
    profile: Profile,
    pins: Pins,
    gpus_per_node: int,
    alternatives: tuple[Alternative, ...],
) -> Plan:
    tight = c.tight
    notes = []
    if c.refusal:
        notes.append("Does not fit: " + c.refusal + ".")
    elif not c.fits:
        notes.append(
            f"Does not fit: the longest context this leaves is {c.max_model_len} tokens, "
            f"below the {profile.name} profile's minimum of {profile.min_max_model_len}."
        )
    elif not c.meets_profile:
        notes.append(
            f"Below the {profile.name} profile's target ({profile.max_model_len} tokens × "
            f"{profile.min_concurrency} sequences); see the alternatives."
        )
    for s in c.stages:
        notes.append(_stage_note(s, c))
    notes.append(
        f"vLLM keeps the smallest KV cache of all stages: stage {tight.index} "
        f"({tight.capacity.num_blocks:,} blocks of {memory.BLOCK_SIZE} tokens) sizes every "
        f"worker; the memory table shows that stage."
    )
    if c.tp < gpus_per_node:
        notes.append(
            f"Uses {c.tp} of the {gpus_per_node} GPUs of each node: {c.variant.name} "
            f"accepts no larger tensor parallel size."
        )
    notes.append(
        f"Multi-node: vLLM runs on Ray ({EXECUTOR} executor). Start `ray start --head "
        f"--port {RAY_PORT}` on the head node, `ray start --address HEAD:{RAY_PORT}` on the "
        f"other {c.pp - 1}, then vllm serve on the head; every node needs the model files "
        f"in the same cache path."
    )
    if c.gpu.spec.total_source == "estimated":
        notes.append(
            f"{c.gpu.name}: memory total estimated from the datasheet (not measured); "
            f"plan on the machine itself for exact figures."
        )
    notes.append(
        f"CUDA graphs ({_gib(tight.memory.cudagraph_bytes)} on stage {tight.index}) are "
        f"allocated on top of gpu_memory_utilization × total in vLLM {memory.VLLM_VERSION}."
    )
    gpus = tuple(replace(c.gpu, index=i % c.tp) for i in range(c.tp * c.pp))
    return Plan(
        variant=c.variant,
        profile=profile,
        gpus=gpus,
        tensor_parallel_size=c.tp,
        pipeline_parallel_size=c.pp,
        max_model_len=c.max_model_len,
        gpu_memory_utilization=c.gmu,
        kv_cache_dtype=c.kv_cache_dtype,
        max_num_seqs=c.mns,
        max_num_batched_tokens=c.mnbt,
        enforce_eager=c.eager,
        enable_prefix_caching=profile.enable_prefix_caching,
        rope_scaling=c.rope_scaling,
        memory=tight.memory,
        capacity=c.capacity,
        fits=c.fits,
        local=False,
        choices=tuple(_reasons(c, profile, pins, gpus_per_node)),
        notes=tuple(notes),
        alternatives=alternatives,
        stages=tuple(c.stages),
        meets_profile=c.meets_profile,
    )


def _stage_note(s: Stage, c: _Candidate) -> str:
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


def _reasons(c: _Candidate, profile: Profile, pins: Pins, gpus_per_node: int) -> list[Choice]:
    v, m, p = c.variant, c.tight.memory, profile.name
    layers = "/".join(str(s.layers) for s in c.stages)
    out = [
        Choice(
            "model",
            v.name,
            f"{v.weight_dtype} weights ({_gib(m.weights_bytes)} per GPU on "
            f"stage {c.tight.index}); profile {p} prefers {', '.join(profile.weights)}",
        ),
        Choice(
            "tensor_parallel_size",
            c.tp,
            "set on the command line"
            if pins.tensor_parallel_size
            else f"the largest size vLLM accepts within a node of {gpus_per_node} GPUs "
            f"({v.spec.num_attention_heads} heads, {v.spec.num_key_value_heads} KV heads)",
        ),
        Choice(
            "pipeline_parallel_size",
            c.pp,
            f"one stage per node; vLLM splits the {v.spec.num_hidden_layers} layers {layers}",
        ),
        Choice(
            "distributed_executor_backend",
            EXECUTOR,
            "vLLM's multi-node executor: one Ray cluster, workers on every node",
        ),
    ]
    if pins.max_model_len:
        out.append(Choice("max_model_len", c.max_model_len, "set on the command line"))
    else:
        out.append(
            Choice(
                "max_model_len",
                c.max_model_len,
                f"the KV cache of the tightest stage holds {c.capacity.max_concurrency:.1f} "
                f"such sequences (at least {profile.min_concurrency} wanted; profile target "
                f"{profile.max_model_len})",
            )
        )
    if c.rope_scaling:
        out.append(
            Choice(
                "hf_overrides",
                f"YaRN factor {c.rope_scaling['factor']:g}",
                f"Qwen's YaRN setting: {c.max_model_len} tokens exceed the native {v.spec.max_position_embeddings}",
            )
        )
    out.append(
        Choice(
            "gpu_memory_utilization",
            c.gmu,
            "set on the command line"
            if pins.gpu_memory_utilization
            else f"profile {p}; the most these GPUs allow is {c.gmu_cap:g}",
        )
    )
    per_token = memory.kv_bytes_per_token(v.spec, c.kv_cache_dtype, c.tp, c.tight.layers)
    out.append(
        Choice(
            "kv_cache_dtype",
            c.kv_cache_dtype,
            f"{'set on the command line' if pins.kv_cache_dtype else 'profile ' + p}; "
            f"{per_token:,} bytes per token per GPU on stage {c.tight.index}",
        )
    )
    out.append(
        Choice(
            "max_num_seqs",
            c.mns,
            "set on the command line" if pins.max_num_seqs else f"profile {p}",
        )
    )
    out.append(
        Choice(
            "max_num_batched_tokens",
            c.mnbt,
            "set on the command line" if pins.max_num_batched_tokens else f"profile {p}",
        )
    )
    out.append(
        Choice(
            "enforce_eager",
            c.eager,
            "set on the command line" if pins.enforce_eager is not None else f"profile {p}",
        )
    )
    out.append(Choice("enable_prefix_caching", profile.enable_prefix_caching, f"profile {p}"))
    return out


# ------------------------------------------------------------------------------------------
# Launching on Ray (pure: argv and text; qwdeploy/launch.py runs them)


def nodes(plan: Plan) -> int:
    """Nodes a plan spans: one pipeline stage per node."""
    return plan.pipeline_parallel_size


def serve_args(plan: Plan) -> list[str]:
    """`vllm serve` arguments of a plan, with the Ray executor when it spans nodes."""
    args = list(plan.vllm_args)
    if nodes(plan) > 1 and "--distributed-executor-backend" not in args:
        args += ["--distributed-executor-backend", EXECUTOR]
    return args


@dataclass(frozen=True)
class RayLaunch:
    """How to start a multi-node plan: a Ray head, N-1 Ray workers, vLLM on the head."""

    nodes: int
    head_address: str
    port: int
    head: tuple[str, ...]  # argv on the head node, first
    worker: tuple[str, ...]  # argv on every other node
    serve: tuple[str, ...]  # argv on the head node once the workers joined (vLLM waits for them)
    env: dict  # environment of vllm serve (plan.env)

    def to_json(self) -> dict:
        return {
            "nodes": self.nodes,
            "head_address": self.head_address,
            "port": self.port,
            "head": list(self.head),
            "worker": list(self.worker),
            "serve": list(self.serve),
            "env": dict(self.env),
        }


def ray_launch(plan: Plan, head_address: str, port: int = RAY_PORT) -> RayLaunch:
    """The argv of each step. vLLM creates its placement group on the running cluster and waits
    up to 30 minutes (ray_utils.PG_WAIT_TIMEOUT) for the workers' GPUs to appear."""
    return RayLaunch(
        nodes=nodes(plan),
        head_address=head_address,
        port=port,
        head=("ray", "start", "--head", f"--port={port}", "--disable-usage-stats"),
        worker=("ray", "start", f"--address={head_address}:{port}", "--disable-usage-stats"),
        serve=("vllm", "serve", *serve_args(plan)),
        env=dict(plan.env),
    )


def ray_instructions(plan: Plan, head_address: str, port: int = RAY_PORT) -> str:
    """What a person runs on each node, as text (the `serve` command prints it on the head)."""
    launch = ray_launch(plan, head_address, port)
    env = "".join(f"{k}={shlex.quote(v)} " for k, v in sorted(launch.env.items()))
    workers = launch.nodes - 1
    return "\n".join(
        [
            f"{plan.model}: {launch.nodes} nodes × {plan.tensor_parallel_size} × {plan.gpu.name} "
            f"(tensor parallel {plan.tensor_parallel_size} inside a node, pipeline parallel "
            f"{plan.pipeline_parallel_size} across nodes) on Ray.",
            "Every node: the same vLLM and Ray versions, the model in the same cache path, and",
            "  VLLM_HOST_IP set to the node's own address on the network the nodes share",
            "  (and NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME to that interface if it has several).",
            "1. On the head node:",
            f"     {shlex.join(launch.head)}",
            "2. On the other node:" if workers == 1 else f"2. On each of the other {workers} nodes:",
            f"     {shlex.join(launch.worker)}",
            f"3. Check that `ray status` shows {launch.nodes * plan.tensor_parallel_size} GPUs, then on the head node:",
            f"     {env}{shlex.join(launch.serve)}",
            "",
        ]
    )
