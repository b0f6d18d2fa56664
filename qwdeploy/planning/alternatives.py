"""Other configurations worth knowing: weights, KV dtype, GPUs, nodes, context.

Pure. Each alternative is a full candidate evaluation (qwdeploy.planning.candidate), so what it
promises is what the planner itself would plan.
"""

from __future__ import annotations

from dataclasses import replace

from qwdeploy.gpus.groups import best_group
from qwdeploy.gpus.specs import Gpu
from qwdeploy.planning.candidate import Candidate, Goal, Placement, evaluate, held_to
from qwdeploy.planning.catalog import family
from qwdeploy.planning.context import round_context
from qwdeploy.planning.kv import BLOCK_SIZE
from qwdeploy.planning.plan import Alternative
from qwdeploy.planning.quant import gpu_problem
from qwdeploy.planning.stages import layout_problem
from qwdeploy.planning.weights import valid_tp_sizes

WEIGHT_QUALITY = ("bf16", "fp16", "fp8", "int8", "int4")  # best first, for ranking
MAX_TP = 8  # the largest tensor-parallel group an alternative proposes (one 8-GPU node)

Option = tuple[str, Candidate]


def alternatives(best: Candidate, gpus: tuple[Gpu, ...], goal: Goal) -> tuple[Alternative, ...]:
    """Ranked: what fits first, then what meets the profile, then the fewest GPUs, the best weights.

    Every plan is offered what its idle GPUs or its extra nodes would buy; a plan that misses its
    profile also other weights, an fp8 KV cache, more GPUs and other contexts. Each keeps the
    user's pins; one that has to change a pin says so in its summary."""
    options = [*_idle_gpus(best, gpus, goal), *_fewer_nodes(best, gpus, goal)]
    if not best.meets_profile:
        options += [*_other_weights(best, gpus, goal), *_fp8_kv(best, goal), *_more_gpus(best, gpus, goal)]
        options += _other_contexts(best, goal)
    ranked = sorted(options, key=_rank)
    return tuple(_alternative(s, c) for s, c in ranked if c.capacity.num_blocks)  # leave out what holds no KV


def _rank(option: Option) -> tuple[bool, bool, int, int]:
    c = option[1]
    return (not c.fits, not c.meets_profile, c.tp * c.pp, WEIGHT_QUALITY.index(c.variant.weight_dtype))


def _alternative(summary: str, c: Candidate) -> Alternative:
    return Alternative(
        summary=summary,
        model=c.variant.name,
        tensor_parallel_size=c.tp,
        kv_cache_dtype=c.kv_cache_dtype,
        max_model_len=c.max_model_len,
        kv_cache_tokens=c.capacity.tokens,
        max_concurrency=c.capacity.max_concurrency,
        fits=c.fits,
        meets_profile=c.meets_profile,
        pipeline_parallel_size=c.pp,
    )


def _changes(flag: str, pinned: object) -> str:
    """The summary's suffix for an alternative that gives up one of the user's pins."""
    return f"; changes {flag} {pinned}" if pinned is not None else ""


def _other_weights(best: Candidate, gpus: tuple[Gpu, ...], goal: Goal) -> list[Option]:
    """The family's other checkpoints (FP8, int4 ...) on the fewest of these GPUs (one node)."""
    if best.pp > 1 or not best.variant.from_catalog:
        return []
    pinned_tp = goal.pins.tensor_parallel_size
    chosen = f"; instead of the {best.variant.weight_dtype} weights asked for" if goal.weights_chosen else ""
    out = []
    cc = min(g.spec.compute_capability for g in gpus)
    for v in family(best.variant.base):
        if v.repo_id == best.variant.repo_id or gpu_problem(v.spec.quantization, cc):
            continue
        sizes = [t for t in valid_tp_sizes(v, len(gpus)) if pinned_tp in (None, t)]
        tried = [evaluate(v, best.kv_cache_dtype, Placement(best_group(gpus, tp)), goal) for tp in sizes]
        c = (
            next((c for c in tried if c.meets_profile), None)
            or next((c for c in tried if c.fits), None)
            or (tried[-1] if tried else None)
        )
        if c is not None:
            out.append((f"{v.weight_dtype} weights ({v.repo_id}){chosen}", c))
    return out


def _fp8_kv(best: Candidate, goal: Goal) -> list[Option]:
    if best.kv_cache_dtype != "auto" or not all(g.spec.fp8_native for g in best.gpus):
        return []
    summary = "fp8 KV cache (halves KV bytes per token)" + _changes("--kv-cache-dtype", goal.pins.kv_cache_dtype)
    return [(summary, evaluate(best.variant, "fp8", best.placement, goal))]


def _more_gpus(best: Candidate, gpus: tuple[Gpu, ...], goal: Goal) -> list[Option]:
    """One node: the next tensor-parallel size that fits. Several nodes: one node more."""
    kv = best.kv_cache_dtype
    if best.pp > 1:
        more = best.pp + 1
        if layout_problem(best.variant, best.tp, more, len(gpus)) is not None:
            return []
        c = evaluate(best.variant, kv, Placement(best.gpus, more), goal)
        return [(f"{more} nodes (pipeline parallel {more})", c)]
    change = _changes("--tensor-parallel-size", goal.pins.tensor_parallel_size)
    for tp in valid_tp_sizes(best.variant, MAX_TP):
        if tp <= best.tp:
            continue
        group = tuple(replace(best.gpus[0], index=i) for i in range(tp))
        c = evaluate(best.variant, kv, Placement(group), goal)
        if c.fits:
            return [(f"{tp} × {best.gpus[0].name} (tensor parallel {tp}){change}", c)]
    return []


def _idle_gpus(best: Candidate, gpus: tuple[Gpu, ...], goal: Goal) -> list[Option]:
    """One node with GPUs the plan leaves idle: the largest tensor-parallel group among them."""
    sizes = [tp for tp in valid_tp_sizes(best.variant, len(gpus)) if tp > best.tp]
    if best.pp > 1 or not sizes:
        return []
    c = evaluate(best.variant, best.kv_cache_dtype, Placement(best_group(gpus, sizes[-1])), goal)
    change = _changes("--tensor-parallel-size", goal.pins.tensor_parallel_size)
    every = "all" if c.tp == len(gpus) else f"{c.tp} of the"
    return [(f"{every} {len(gpus)} GPUs (tensor parallel {c.tp}): more KV cache, faster decode{change}", c)]


def _fewer_nodes(best: Candidate, gpus: tuple[Gpu, ...], goal: Goal) -> list[Option]:
    """A multi-node plan whose profile fewer nodes already meet: the fewest such nodes."""
    for pp in range(1, best.pp):
        if pp > 1 and layout_problem(best.variant, best.tp, pp, len(gpus)) is not None:
            continue
        c = evaluate(best.variant, best.kv_cache_dtype, Placement(best.gpus, pp), goal)
        if c.meets_profile:
            where = "one node" if pp == 1 else f"{pp} nodes (pipeline parallel {pp})"
            return [(f"{where} of {best.tp} × {best.gpus[0].name}: already meets the {goal.profile.name} profile", c)]
    return []


def _other_contexts(best: Candidate, goal: Goal) -> list[Option]:
    """The longest context that fits, and the longest that keeps the profile's concurrency."""
    cap, profile = best.capacity, goal.profile
    keeps = round_context(cap.num_blocks // profile.min_concurrency * BLOCK_SIZE)
    lengths = {
        round_context(cap.max_model_len_limit) or cap.max_model_len_limit: "the longest that fits",
        keeps: f"keeps the {profile.name} profile's {profile.min_concurrency} sequences",
    }
    change = _changes("--max-model-len", goal.pins.max_model_len)
    out = []
    for mml, why in lengths.items():
        if mml >= BLOCK_SIZE and mml != best.max_model_len:
            pinned = replace(goal, pins=replace(goal.pins, max_model_len=mml))
            c = held_to(evaluate(best.variant, best.kv_cache_dtype, best.placement, pinned), best.target, profile)
            out.append((f"max_model_len {c.max_model_len} ({why}{change})", c))
    return out
