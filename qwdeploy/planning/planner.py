"""The planner: model variants + profile + GPUs (+ nodes) -> a vLLM configuration that fits, and why.

Pure: no I/O. GPUs come in as data (named for capacity planning, or probed), so planning for
hardware the user does not have is the same code path as planning for the local machine. One
node and many are one search: a candidate is weights × KV dtype × a placement (a tensor-parallel
group, repeated over `nodes` pipeline stages).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.gpus.groups import best_group
from qwdeploy.gpus.specs import Gpu
from qwdeploy.planning.alternatives import alternatives
from qwdeploy.planning.calibration import CALIBRATION, Calibration
from qwdeploy.planning.candidate import Candidate, Goal, Placement, evaluate
from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.context import context_ceiling
from qwdeploy.planning.explain import to_plan
from qwdeploy.planning.plan import Pins, Plan
from qwdeploy.planning.profiles import Profile
from qwdeploy.planning.quant import gpu_problem, runs_on
from qwdeploy.planning.stages import layout_problem
from qwdeploy.planning.versions import DEFAULT_TARGET, VLLM_VERSION, VllmTarget
from qwdeploy.planning.weights import tp_problem, valid_tp_sizes


@dataclass(frozen=True)
class Problem:
    """What to plan: the variants in order of preference, the profile, the GPUs, the pins."""

    variants: tuple[Variant, ...]
    profile: Profile
    gpus: tuple[Gpu, ...]  # one node's GPUs (every node is alike)
    pins: Pins = Pins()
    nodes: int = 1  # pipeline stages, one per node
    local: bool = False  # probed GPUs: CUDA_VISIBLE_DEVICES pins the group
    cal: Calibration = CALIBRATION  # overheads, corrected by serve's records on this machine
    calibration_note: str | None = None  # says where a corrected `cal` came from
    weights_chosen: bool = False  # the user named the weights: the profile's preference does not apply
    vllm: VllmTarget = DEFAULT_TARGET  # the vLLM release to plan for (qwdeploy.planning.versions)


def plan(problem: Problem) -> Plan:
    """The configuration to run, chosen among `problem.variants` (in order of preference)."""
    _check(problem)
    problem = _runnable(problem)
    goal = Goal(problem.profile, problem.pins, problem.cal, problem.weights_chosen, problem.vllm)
    candidates: list[Candidate] = []
    for candidate in _search_order(problem, goal):
        candidates.append(candidate)
        if candidate.meets_profile:
            break
    best = next((c for c in candidates if c.meets_profile), None) or max(candidates, key=_fallback_rank)
    others = alternatives(best, problem.gpus, goal)
    result = to_plan(best, goal, problem.local, others, len(problem.gpus))
    if problem.calibration_note:
        result = replace(result, notes=result.notes + (problem.calibration_note,))
    return result


def choose_gpus(gpus: tuple[Gpu, ...] | list[Gpu], count: int) -> tuple[Gpu, ...]:
    """The TP group of `count` GPUs: one kind, best linked, most free memory (gpus.groups)."""
    return best_group(gpus, count)


def _check(problem: Problem) -> None:
    pins = problem.pins
    if not problem.gpus:
        raise QwdeployError("no GPUs to plan for", hint="name them: --gpu H100 --num-gpus 1")
    if pins.max_num_seqs and pins.max_num_batched_tokens and pins.max_num_batched_tokens < pins.max_num_seqs:
        raise QwdeployError(
            "--max-num-batched-tokens must be at least --max-num-seqs",
            hint="vLLM refuses max_num_batched_tokens < max_num_seqs",
        )
    for v in problem.variants:
        _check_context(v, pins)
    _check_kv_dtype(pins, problem.gpus)
    if problem.nodes > 1:
        for v in problem.variants:
            problem_text = layout_problem(v, 1, problem.nodes, len(problem.gpus))
            if problem_text:
                raise QwdeployError(
                    f"{v.name} cannot be split over {problem.nodes} nodes: {problem_text}",
                    hint=f"use at most {v.spec.num_hidden_layers} nodes",
                )


def _check_context(variant: Variant, pins: Pins) -> None:
    """A pinned max_model_len within what the model serves (native, or Qwen's YaRN factor 4)."""
    longest = context_ceiling(variant, allow_yarn=True)
    if pins.max_model_len and pins.max_model_len > longest:
        how = "with Qwen's YaRN setting (factor 4)"
        if longest == variant.spec.context_length:
            how = "as its config.json scales RoPE" if variant.spec.rope_scaling else "natively"
        raise QwdeployError(
            f"--max-model-len {pins.max_model_len} is longer than {variant.name} serves: "
            f"at most {longest} tokens {how}",
            hint=f"use --max-model-len {longest} or less",
            exit_code=ExitCode.USAGE,
        )


def _check_kv_dtype(pins: Pins, gpus: tuple[Gpu, ...]) -> None:
    """vLLM 0.26 has no fp8 KV-cache attention below compute capability 8.0: FlashAttention 2 and
    FlashInfer need SM80+, and the Triton backend (the only one there) refuses fp8 below SM89.
    (vllm-cpu's node has compute capability (0, 0): not a CUDA GPU, not this rule.)"""
    old = next((g for g in gpus if (0, 0) < g.spec.compute_capability < (8, 0)), None)
    if pins.kv_cache_dtype and pins.kv_cache_dtype.startswith("fp8") and old is not None:
        cc = ".".join(map(str, old.spec.compute_capability))
        raise QwdeployError(
            f"--kv-cache-dtype {pins.kv_cache_dtype} does not run on {old.name} (compute capability {cc}) in "
            f"vLLM {VLLM_VERSION}: its attention backend there (Triton) refuses an fp8 KV cache below SM89, "
            "and FlashAttention and FlashInfer need SM80",
            hint="use --kv-cache-dtype auto",
            exit_code=ExitCode.USAGE,
        )


def _runnable(problem: Problem) -> Problem:
    """The variants whose format vLLM runs on these GPUs; none: an error naming what runs there."""
    gpu = min(problem.gpus, key=lambda g: g.spec.compute_capability)
    cc = gpu.spec.compute_capability
    runnable = tuple(v for v in problem.variants if gpu_problem(v.spec.quantization, cc) is None)
    if runnable:
        return replace(problem, variants=runnable)
    v = problem.variants[0]
    raise QwdeployError(
        f"{v.name} cannot run on {gpu.name}: {gpu_problem(v.spec.quantization, cc)}",
        hint=f"vLLM 0.26 runs {', '.join(runs_on(cc))} weights there",
    )


def _search_order(problem: Problem, goal: Goal) -> Iterator[Candidate]:
    """Candidates in the order the profile prefers them.

    One node: the GPU count first (fewest or most, by the profile), then weights, then KV dtype.
    Several nodes: every node is used, so weights first, each at the largest TP inside a node.
    """
    kv_options = _kv_options(problem.profile, problem.pins, problem.gpus)
    if problem.nodes > 1:
        for v in problem.variants:
            tp = _tp_for_nodes(v, len(problem.gpus), problem.pins.tensor_parallel_size, problem.nodes)
            placement = Placement(tuple(problem.gpus[:tp]), problem.nodes)
            for kv in kv_options:
                yield evaluate(v, kv, placement, goal)
        return
    policy = problem.profile.tensor_parallel
    tp_lists = {v.repo_id: _tp_sizes(v, len(problem.gpus), problem.pins.tensor_parallel_size) for v in problem.variants}
    all_tps = sorted({tp for tps in tp_lists.values() for tp in tps}, reverse=(policy == "most"))
    for tp in all_tps:
        placement = Placement(choose_gpus(problem.gpus, tp))
        for v in problem.variants:
            if tp in tp_lists[v.repo_id]:
                for kv in kv_options:
                    yield evaluate(v, kv, placement, goal)


def _tp_sizes(variant: Variant, gpu_count: int, pinned: int | None) -> list[int]:
    if not pinned:
        return valid_tp_sizes(variant, gpu_count)
    problem = tp_problem(variant, pinned)
    if problem:
        valid = valid_tp_sizes(variant, 64)
        raise QwdeployError(
            f"--tensor-parallel-size {pinned} does not work for {variant.name}: {problem}",
            hint=f"valid sizes: {', '.join(map(str, valid))}",
        )
    if pinned > gpu_count:
        raise QwdeployError(
            f"--tensor-parallel-size {pinned} needs {pinned} GPUs; {gpu_count} available",
            hint="plan for more GPUs with --gpu NAME --num-gpus N",
        )
    return [pinned]


def _tp_for_nodes(variant: Variant, gpus_per_node: int, pinned: int | None, pp: int) -> int:
    """TP across nodes: the pinned size, else the largest size vLLM accepts that fits in a node."""
    if pinned:
        problem = layout_problem(variant, pinned, pp, gpus_per_node)
        if problem:
            raise QwdeployError(
                f"--tensor-parallel-size {pinned} does not work for {variant.name} on {pp} nodes: {problem}",
                hint="valid sizes: " + ", ".join(map(str, valid_tp_sizes(variant, gpus_per_node))),
            )
        return pinned
    sizes = valid_tp_sizes(variant, gpus_per_node)
    if not sizes:
        raise QwdeployError(f"no tensor parallel size of {variant.name} fits {gpus_per_node} GPUs")
    return sizes[-1]


def _kv_options(profile: Profile, pins: Pins, gpus: tuple[Gpu, ...]) -> list[str]:
    if pins.kv_cache_dtype:
        return [pins.kv_cache_dtype]
    fp8_ok = all(g.spec.fp8_native for g in gpus)
    return [kv for kv in profile.kv_cache_dtype if kv == "auto" or fp8_ok] or ["auto"]


def _fallback_rank(c: Candidate) -> tuple[bool, int, float, int]:
    """Among candidates that miss the profile: what starts first, then the most context, then
    the most concurrency, then the fewest GPUs."""
    context = c.max_model_len if c.fits else c.capacity.max_model_len_limit
    return (c.fits, context, c.capacity.max_concurrency, -c.tp)
