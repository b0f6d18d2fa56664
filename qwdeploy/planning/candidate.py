"""One candidate configuration (weights, KV dtype, GPUs, stages) and what vLLM would do with it. Pure.

The planner's only evaluator: one node is one pipeline stage; across nodes every stage is sized
like one GPU for its own layers, and the tightest stage sets the KV cache for all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from qwdeploy.gpus.specs import Gpu
from qwdeploy.planning.calibration import CALIBRATION, Calibration
from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.context import context_ceiling, derived_context, rope_for, rope_max_position, round_context
from qwdeploy.planning.distributed import init_bytes
from qwdeploy.planning.engine import Engine
from qwdeploy.planning.kv import BLOCK_SIZE, KvCapacity, kv_bytes_per_token
from qwdeploy.planning.memory import (
    MemoryBreakdown,
    activation_bytes,
    after_capture_bytes,
    cudagraph_on_top_bytes,
    max_utilization,
)
from qwdeploy.planning.plan import Pins
from qwdeploy.planning.profiles import Profile
from qwdeploy.planning.stages import Stage, most_layers, stage_memory, tightest
from qwdeploy.planning.versions import DEFAULT_TARGET, VllmTarget
from qwdeploy.units import GiB, MiB

# The least headroom left free beside vLLM's budget when choosing gpu_memory_utilization
# (allocator growth after graph capture, another tool's CUDA context). vLLM has none of its
# own: free < requested is a refusal.
FREE_MEMORY_MARGIN_BYTES = 512 * MiB


@dataclass(frozen=True)
class Goal:
    """What a candidate is measured against: the profile, the user's pins, the overheads, the vLLM."""

    profile: Profile
    pins: Pins = Pins()
    cal: Calibration = CALIBRATION
    weights_chosen: bool = False  # the user named the weights (a quantized repo id, --dtype, a directory)
    vllm: VllmTarget = DEFAULT_TARGET  # the vLLM release planned for


@dataclass(frozen=True)
class Placement:
    """Where vLLM runs: one node's tensor-parallel group, repeated on `pp` nodes (one stage each)."""

    gpus: tuple[Gpu, ...]
    pp: int = 1

    @property
    def tp(self) -> int:
        return len(self.gpus)

    @property
    def smallest(self) -> Gpu:
        return min(self.gpus, key=lambda g: (g.total_bytes, g.free_bytes))


@dataclass(frozen=True)
class Candidate:
    variant: Variant
    kv_cache_dtype: str
    placement: Placement
    gmu: float
    gmu_cap: float  # the largest gpu_memory_utilization whose start and first requests fit
    engine: Engine
    rope_scaling: dict[str, Any] | None
    stages: tuple[Stage, ...]
    capacity: KvCapacity
    graphs_on_top: int  # CUDA-graph memory beyond the KV budget, on the GPU with the most layers
    fits: bool = False  # vLLM starts and serves at least one sequence of max_model_len
    meets_profile: bool = False  # fits, and holds the profile's context and concurrency targets
    refusal: str | None = None  # why vLLM would refuse to start, if it would
    misses: tuple[str, ...] = ()  # the profile targets it misses (empty when it meets the profile)
    target: int = 0  # the context it is held to: the pinned max_model_len, else the profile's

    @property
    def tp(self) -> int:
        return self.placement.tp

    @property
    def pp(self) -> int:
        return self.placement.pp

    @property
    def gpus(self) -> tuple[Gpu, ...]:
        return self.placement.gpus

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def mns(self) -> int:
        return self.engine.max_num_seqs

    @property
    def mnbt(self) -> int:
        return self.engine.max_num_batched_tokens

    @property
    def eager(self) -> bool:
        return self.engine.enforce_eager

    @property
    def tight(self) -> Stage:
        return tightest(self.stages)

    @property
    def memory(self) -> MemoryBreakdown:
        return self.tight.memory


def engine_for(variant: Variant, kv: str, placement: Placement, goal: Goal) -> Engine:
    """The settings the profile and the pins ask for, before the context is fitted."""
    profile, pins = goal.profile, goal.pins
    mns = pins.max_num_seqs or profile.max_num_seqs
    ceiling = context_ceiling(variant, profile.allow_yarn or bool(pins.max_model_len))
    target = pins.max_model_len or min(profile.max_model_len, ceiling)
    return Engine(
        tensor_parallel_size=placement.tp,
        pipeline_parallel_size=placement.pp,
        max_model_len=target,
        max_num_batched_tokens=pins.max_num_batched_tokens or max(profile.max_num_batched_tokens, mns),
        max_num_seqs=mns,
        enforce_eager=profile.enforce_eager if pins.enforce_eager is None else pins.enforce_eager,
        kv_cache_dtype=kv,
        max_position=rope_max_position(rope_for(variant, target)),
        compile_cache_warm=pins.compile_cache_warm,
        compute_capability=placement.smallest.spec.compute_capability,
        vllm=goal.vllm.rules,
    )


def evaluate(variant: Variant, kv: str, placement: Placement, goal: Goal) -> Candidate:
    """What vLLM would get with these weights, KV dtype and GPUs under the goal."""
    engine = engine_for(variant, kv, placement, goal)
    target = engine.max_model_len
    graphs = cudagraph_on_top_bytes(variant, engine, most_layers(variant, placement.pp), goal.cal)
    gmu_cap = utilization_ceiling(variant, engine, placement, graphs, goal.cal)
    gmu = goal.pins.gpu_memory_utilization or min(goal.profile.gpu_memory_utilization, gmu_cap)
    rope = rope_for(variant, target)
    stages = _stages(variant, engine, placement, gmu, goal)
    mml = goal.pins.max_model_len or _fitted_context(tightest(stages).capacity, target, goal.profile)
    if mml < target and rope and mml <= variant.spec.context_length:
        rope = None  # the reduced context no longer needs YaRN
    engine = replace(engine, max_model_len=mml, max_position=rope_max_position(rope))
    stages = _stages(variant, engine, placement, gmu, goal)
    cap = tightest(stages).capacity
    limit = max(derived_context(variant, rope), engine.max_model_len)
    cap = replace(cap, max_model_len_limit=min(cap.max_model_len_limit, limit))
    c = Candidate(variant, kv, placement, gmu, gmu_cap, engine, rope, stages, cap, graphs)
    return _judged(c, target, goal)


def utilization_ceiling(variant: Variant, engine: Engine, placement: Placement, graphs: int, cal: Calibration) -> float:
    """The largest gpu_memory_utilization every GPU of the placement keeps through the whole start."""
    held = cal.cuda_context_bytes + init_bytes(variant, engine, cal)
    growth = after_capture_bytes(activation_bytes(variant, engine, cal), FREE_MEMORY_MARGIN_BYTES)
    return min(max_utilization(g.total_bytes, g.free_bytes, held + graphs + growth) for g in placement.gpus)


def _stages(variant: Variant, engine: Engine, placement: Placement, gmu: float, goal: Goal) -> tuple[Stage, ...]:
    total = placement.smallest.total_bytes
    return stage_memory(variant, engine, placement.pp, total, gmu, goal.cal)


def _fitted_context(cap: KvCapacity, target: int, profile: Profile) -> int:
    """The context to plan, up to the target: the longest that keeps the profile's concurrency
    while that is at least the profile's shortest useful context (min_max_model_len); below it,
    the concurrency is given up instead: the longest that serves one sequence."""
    if not cap.num_blocks:
        return target  # no KV cache at all: keep the target, so the command shows what was asked
    by_concurrency = round_context(cap.num_blocks // profile.min_concurrency * BLOCK_SIZE)
    if by_concurrency >= min(target, profile.min_max_model_len):
        return min(target, by_concurrency)
    return min(target, round_context(cap.num_blocks * BLOCK_SIZE))


def _judged(c: Candidate, target: int, goal: Goal) -> Candidate:
    ceiling = context_ceiling(c.variant, goal.profile.allow_yarn or bool(goal.pins.max_model_len))
    refusal = refusal_of(c, ceiling, goal.pins)
    misses = (f"it does not start: {refusal}",) if refusal else profile_misses(c, target, goal.profile)
    return replace(c, fits=refusal is None, meets_profile=not misses, refusal=refusal, misses=misses, target=target)


def held_to(c: Candidate, target: int, profile: Profile) -> Candidate:
    """`c` judged against another context target: an alternative that only changes the context
    is held to the plan's target, not to the context it pins."""
    if not c.fits:
        return c
    misses = profile_misses(c, target, profile)
    return replace(c, meets_profile=not misses, misses=misses, target=target)


def profile_misses(c: Candidate, target: int, profile: Profile) -> tuple[str, ...]:
    """The profile's targets a candidate that starts misses: its context, its concurrency."""
    out = []
    if c.max_model_len < target:
        out.append(f"max_model_len {c.max_model_len} is below the {profile.name} profile's {target}")
    if c.capacity.max_concurrency < profile.min_concurrency:
        out.append(
            f"the KV cache holds {c.capacity.max_concurrency:.2f} sequences of {c.max_model_len} tokens; "
            f"the {profile.name} profile wants {profile.min_concurrency}"
        )
    return tuple(out)


def refusal_of(c: Candidate, ceiling: int, pins: Pins) -> str | None:
    """The reason vLLM would refuse to start (or die while starting), or None."""
    return _context_refusal(c, ceiling) or _kv_refusal(c) or _free_memory_refusal(c, pins)


def _context_refusal(c: Candidate, ceiling: int) -> str | None:
    longest = max(derived_context(c.variant, c.rope_scaling), ceiling)
    if c.max_model_len > longest:
        yarn = " with YaRN" if c.rope_scaling else ""
        return f"max_model_len {c.max_model_len} is longer than the model's context ({longest}{yarn}); vLLM refuses it"
    return None


def _kv_refusal(c: Candidate) -> str | None:
    for s in c.stages:
        m = s.memory
        if m.kv_cache_bytes <= 0:
            return (
                f"{_where(s, c)}the weights ({_gib(m.weights_bytes)}) and overheads "
                f"({_gib(m.activation_bytes + m.non_torch_bytes)}) leave no KV cache within "
                f"gpu_memory_utilization {c.gmu:g} × {_gib(m.total_bytes)}"
            )
    blocks_needed = math.ceil(c.max_model_len / BLOCK_SIZE)
    if c.capacity.num_blocks >= blocks_needed:
        return None
    t = c.tight
    per_token = kv_bytes_per_token(c.variant.spec, c.kv_cache_dtype, c.tp, t.layers)
    on_stage = f" on stage {t.index}" if c.pp > 1 else ""
    return (
        f"one {c.max_model_len}-token sequence needs {_gib(blocks_needed * BLOCK_SIZE * per_token)} of KV cache"
        f"{on_stage} but only {_gib(t.memory.kv_cache_bytes)} is left; the longest that fits is "
        f"{c.capacity.max_model_len_limit} (vLLM's estimated maximum model length)"
    )


def _free_memory_refusal(c: Candidate, pins: Pins) -> str | None:
    m = c.stages[0].memory
    held = m.held_before_start_bytes
    what = "CUDA context and communicators exist" if m.distributed_init_bytes else "CUDA context exists"
    for g in c.gpus:
        if pins.gpu_memory_utilization and m.requested_bytes > g.free_bytes - held:
            return (
                f"gpu_memory_utilization {c.gmu:g} asks for {_gib(m.requested_bytes)} but only "
                f"{_gib(g.free_bytes - held)} is free on GPU {g.index} once "
                f"vLLM's {what}; vLLM refuses to start"
            )
        # capture_model empties torch's cache first: the profile run's activation blocks go back
        if m.requested_bytes - m.activation_bytes + c.graphs_on_top + held > g.free_bytes:
            return (
                f"gpu_memory_utilization {c.gmu:g} plus CUDA graphs ({_gib(c.graphs_on_top)}) exceeds the "
                f"{_gib(g.free_bytes)} free on GPU {g.index}: out of memory while capturing graphs"
            )
    if pins.gpu_memory_utilization and c.gmu > c.gmu_cap:
        return (
            f"gpu_memory_utilization {c.gmu:g} leaves too little memory for vLLM's kernel warm-up "
            f"after CUDA-graph capture and its first requests (they grow past the budget by about the "
            f"activation peak, {_gib(m.activation_bytes)}): out of memory once started; at most {c.gmu_cap:g}"
        )
    return None


def _where(stage: Stage, c: Candidate) -> str:
    if c.pp == 1:
        return ""
    return f"stage {stage.index} (layers {stage.start_layer}-{stage.end_layer - 1}): "


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"
