"""Other configurations worth knowing when the plan misses its profile: weights, KV dtype, GPUs, context.

Pure. Each alternative is a full candidate evaluation (qwdeploy.planning.candidate), so what it
promises is what the planner itself would plan.
"""

from __future__ import annotations

from dataclasses import replace

from qwdeploy.gpus.groups import best_group
from qwdeploy.gpus.specs import Gpu
from qwdeploy.planning.candidate import Candidate, Goal, Placement, evaluate
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
    """Ranked: what fits first, then what meets the profile, then the fewest GPUs, the best weights."""
    loose = replace(goal, pins=replace(goal.pins, max_model_len=None))
    options = [*_other_weights(best, gpus, loose), *_fp8_kv(best, loose), *_more_gpus(best, gpus, loose)]
    options += _longest_context(best, goal)
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
    )


def _other_weights(best: Candidate, gpus: tuple[Gpu, ...], goal: Goal) -> list[Option]:
    """The family's other checkpoints (FP8, int4 ...) on the fewest of these GPUs (one node)."""
    if best.pp > 1 or not best.variant.from_catalog:
        return []
    out = []
    cc = min(g.spec.compute_capability for g in gpus)
    for v in family(best.variant.base):
        if v.repo_id == best.variant.repo_id or gpu_problem(v.spec.quantization, cc):
            continue
        tried = [
            evaluate(v, best.kv_cache_dtype, Placement(best_group(gpus, tp)), goal)
            for tp in valid_tp_sizes(v, len(gpus))
        ]
        c = (
            next((c for c in tried if c.meets_profile), None)
            or next((c for c in tried if c.fits), None)
            or (tried[-1] if tried else None)
        )
        if c is not None:
            out.append((f"{v.weight_dtype} weights ({v.repo_id})", c))
    return out


def _fp8_kv(best: Candidate, goal: Goal) -> list[Option]:
    if best.kv_cache_dtype != "auto" or not all(g.spec.fp8_native for g in best.gpus):
        return []
    return [("fp8 KV cache (halves KV bytes per token)", evaluate(best.variant, "fp8", best.placement, goal))]


def _more_gpus(best: Candidate, gpus: tuple[Gpu, ...], goal: Goal) -> list[Option]:
    """One node: the next tensor-parallel size that fits. Several nodes: one node more."""
    kv = best.kv_cache_dtype
    if best.pp > 1:
        more = best.pp + 1
        if layout_problem(best.variant, best.tp, more, len(gpus)) is not None:
            return []
        c = evaluate(best.variant, kv, Placement(best.gpus, more), goal)
        return [(f"{more} nodes (pipeline parallel {more})", c)]
    for tp in valid_tp_sizes(best.variant, MAX_TP):
        if tp <= best.tp:
            continue
        group = tuple(replace(best.gpus[0], index=i) for i in range(tp))
        c = evaluate(best.variant, kv, Placement(group), goal)
        if c.fits:
            return [(f"{tp} × {best.gpus[0].name} (tensor parallel {tp})", c)]
    return []


def _longest_context(best: Candidate, goal: Goal) -> list[Option]:
    limit = best.capacity.max_model_len_limit
    if limit < BLOCK_SIZE:
        return []
    shorter = replace(goal, pins=replace(goal.pins, max_model_len=round_context(limit) or limit))
    c = evaluate(best.variant, best.kv_cache_dtype, best.placement, shorter)
    return [(f"max_model_len {c.max_model_len} (the longest that fits)", c)]
