"""The planner: model variant + profile + GPUs -> a vLLM configuration that fits, and why.

Pure: no I/O. GPUs come in as data (named for capacity planning, or probed), so planning for
hardware the user does not have is the same code path as planning for the local machine.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Sequence

from qwdeploy import memory
from qwdeploy.catalog import Variant
from qwdeploy.errors import QwdeployError
from qwdeploy.hardware import Gpu
from qwdeploy.memory import GiB, MemoryBreakdown
from qwdeploy.profiles import Profile

# Headroom left free beside vLLM when choosing gpu_memory_utilization (allocator slack,
# another tool's CUDA context). vLLM has none of its own: free < requested is a refusal.
FREE_MEMORY_MARGIN_BYTES = 512 * memory.MiB
YARN_ORIGINAL_MAX = 32768  # Qwen3's native window; YaRN factor f serves f × 32768 tokens
YARN_MAX_FACTOR = 4  # Qwen validated YaRN up to factor 4 (131072 tokens)
WEIGHT_QUALITY = ("bf16", "fp16", "fp8", "int8", "int4")  # best first, for ranking


@dataclass(frozen=True)
class Pins:
    """Values the user fixed on the command line; the planner fills the rest."""

    tensor_parallel_size: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_dtype: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enforce_eager: bool | None = None
    # vLLM's profile run peaks higher while torch.compile compiles (a cold cache); a restart
    # with a warm cache gets that memory back as KV cache. Plans assume a first start.
    compile_cache_warm: bool = False


@dataclass(frozen=True)
class Choice:
    """One planned setting and the one-line reason for it."""

    key: str
    value: object
    reason: str


@dataclass(frozen=True)
class Alternative:
    """Another configuration worth knowing about when the plan does not fit (or barely)."""

    summary: str
    model: str
    tensor_parallel_size: int
    kv_cache_dtype: str
    max_model_len: int
    kv_cache_tokens: int
    max_concurrency: float
    fits: bool

    def to_json(self) -> dict:
        return {
            "summary": self.summary,
            "model": self.model,
            "tensor_parallel_size": self.tensor_parallel_size,
            "kv_cache_dtype": self.kv_cache_dtype,
            "max_model_len": self.max_model_len,
            "kv_cache_tokens": self.kv_cache_tokens,
            "max_concurrency": round(self.max_concurrency, 2),
            "fits": self.fits,
        }


@dataclass(frozen=True)
class Plan:
    variant: Variant
    profile: Profile
    gpus: tuple[Gpu, ...]  # the GPUs the plan uses (a TP group)
    tensor_parallel_size: int
    max_model_len: int
    gpu_memory_utilization: float
    kv_cache_dtype: str
    max_num_seqs: int
    max_num_batched_tokens: int
    enforce_eager: bool
    enable_prefix_caching: bool
    rope_scaling: dict | None  # Qwen's YaRN setting when max_model_len exceeds the native window
    memory: MemoryBreakdown  # per GPU (every rank is the same for TP without PP)
    capacity: memory.KvCapacity
    fits: bool
    local: bool  # planned against probed GPUs (CUDA_VISIBLE_DEVICES applies)
    pipeline_parallel_size: int = 1
    choices: tuple[Choice, ...] = ()
    notes: tuple[str, ...] = ()
    alternatives: tuple[Alternative, ...] = ()
    meets_profile: bool = True
    performance: dict = field(default_factory=dict)
    stages: tuple = ()  # multinode.Stage per pipeline stage (pipeline_parallel_size > 1)

    # ---- derived facts -------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.variant.name

    @property
    def quantization(self) -> str | None:
        q = self.variant.spec.quantization
        return q.method if q else None

    @property
    def dtype(self) -> str:
        if self.variant.weights == "fp16" or self.variant.spec.torch_dtype in ("float16", "fp16"):
            return "float16"
        return "bfloat16"

    @property
    def hf_overrides(self) -> dict | None:
        if not self.rope_scaling:
            return None
        return {"rope_parameters": {"rope_theta": self._rope_theta(), **self.rope_scaling}}

    def _rope_theta(self) -> float:
        return 1000000 if not self.variant.is_2507 else 5000000

    @property
    def sampling(self) -> dict:
        """Qwen's recommended sampling defaults for the model and mode."""
        thinking = {"always": True, "never": False}.get(self.variant.thinking, self.profile.thinking)
        if thinking:
            return {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}
        return {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0}

    @property
    def reasoning_parser(self) -> str | None:
        if self.variant.thinking == "never":
            return None  # Instruct-2507 never thinks
        if self.variant.thinking == "always" and self.profile.reasoning_parser:
            return "deepseek_r1"  # Thinking-2507 templates open <think> themselves (Qwen's README)
        return self.profile.reasoning_parser

    @property
    def cuda_visible_devices(self) -> str | None:
        if not self.local:
            return None
        return ",".join(g.uuid or str(g.index) for g in self.gpus)

    @property
    def env(self) -> dict[str, str]:
        env = {}
        if self.cuda_visible_devices:
            env["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices
        if self.max_model_len > self._derived_max_model_len():
            env["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
        return env

    def _derived_max_model_len(self) -> int:
        if self.rope_scaling:
            return int(self.rope_scaling["original_max_position_embeddings"] * self.rope_scaling["factor"])
        return self.variant.spec.max_position_embeddings

    @property
    def vllm_args(self) -> list[str]:
        """Arguments of `vllm serve`: the model, then every setting explicitly."""
        args = [
            self.model,
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--pipeline-parallel-size",
            str(self.pipeline_parallel_size),
            "--max-model-len",
            str(self.max_model_len),
            "--gpu-memory-utilization",
            f"{self.gpu_memory_utilization:g}",
            "--kv-cache-dtype",
            self.kv_cache_dtype,
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--max-num-batched-tokens",
            str(self.max_num_batched_tokens),
            "--block-size",
            str(memory.BLOCK_SIZE),
            "--dtype",
            self.dtype,
            "--enable-prefix-caching" if self.enable_prefix_caching else "--no-enable-prefix-caching",
        ]
        if self.enforce_eager:
            args.append("--enforce-eager")
        if self.pipeline_parallel_size > 1:
            args += ["--distributed-executor-backend", "ray"]  # vLLM's multi-node path
        if self.hf_overrides:
            args += ["--hf-overrides", json.dumps(self.hf_overrides, separators=(",", ":"))]
        if self.reasoning_parser:
            args += ["--reasoning-parser", self.reasoning_parser]
        if self.profile.tool_call_parser:
            args += ["--enable-auto-tool-choice", "--tool-call-parser", self.profile.tool_call_parser]
        args += ["--override-generation-config", json.dumps(self.sampling, separators=(",", ":"))]
        return args

    @property
    def gpu(self) -> Gpu:
        """The GPU the plan is sized against: the smallest of the group."""
        return min(self.gpus, key=lambda g: (g.total_bytes, g.free_bytes))

    def to_json(self) -> dict:
        m = self.memory
        return {
            "model": self.model,
            "profile": self.profile.name,
            "quantization": self.quantization,
            "weights": self.variant.weight_dtype,
            "dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "kv_cache_dtype": self.kv_cache_dtype,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "enforce_eager": self.enforce_eager,
            "enable_prefix_caching": self.enable_prefix_caching,
            "block_size": memory.BLOCK_SIZE,
            "hf_overrides": self.hf_overrides,
            "reasoning_parser": self.reasoning_parser,
            "tool_call_parser": self.profile.tool_call_parser,
            "sampling": self.sampling,
            "gpu": {
                "name": self.gpu.name,
                "total_bytes": self.gpu.total_bytes,
                "free_bytes": min(g.free_bytes for g in self.gpus),
                "count": len(self.gpus),
            },
            "cuda_visible_devices": self.cuda_visible_devices,
            "memory_per_gpu": {
                "total_bytes": m.total_bytes,
                "requested_bytes": m.requested_bytes,
                "weights_bytes": m.weights_bytes,
                "activation_bytes": m.activation_bytes,
                "cudagraph_bytes": m.cudagraph_bytes,
                "cudagraph_in_budget_bytes": m.cudagraph_in_budget_bytes,
                "non_torch_bytes": m.non_torch_bytes,
                "kv_cache_bytes": max(0, m.kv_cache_bytes),
                "cuda_context_bytes": m.cuda_context_bytes,
                "footprint_bytes": m.footprint_bytes,
            },
            "kv_cache_bytes_per_token": memory.kv_bytes_per_token(
                self.variant.spec, self.kv_cache_dtype, self.tensor_parallel_size, self.layers_per_gpu
            ),
            "num_gpu_blocks": self.capacity.num_blocks,
            "kv_cache_tokens": self.capacity.tokens,
            "max_concurrency": round(self.capacity.max_concurrency, 2),
            "max_model_len_limit": self.capacity.max_model_len_limit,
            "fits": self.fits,
            "meets_profile": self.meets_profile,
            "vllm_version": memory.VLLM_VERSION,
            "vllm_args": self.vllm_args,
            "vllm_command": "vllm serve " + _shell_join(self.vllm_args),
            "env": self.env,
            "choices": [{"key": c.key, "value": c.value, "reason": c.reason} for c in self.choices],
            "notes": list(self.notes),
            "alternatives": [a.to_json() for a in self.alternatives],
            "performance": self.performance,
            "stages": [s.to_json() for s in self.stages],
        }

    @property
    def layers_per_gpu(self) -> int:
        """Decoder layers on the GPU that sets the KV cache (the tightest pipeline stage)."""
        if not self.stages:
            return self.variant.spec.num_hidden_layers
        tight = min(self.stages, key=lambda s: s.capacity.num_blocks)
        return tight.layers


def _shell_join(args: Sequence[str]) -> str:
    import shlex

    return shlex.join(args)


# ------------------------------------------------------------------------------------------
# Evaluating one candidate configuration


@dataclass(frozen=True)
class _Candidate:
    variant: Variant
    kv_cache_dtype: str
    tp: int
    gpus: tuple[Gpu, ...]
    gmu: float
    gmu_cap: float
    mnbt: int
    mns: int
    eager: bool
    max_model_len: int
    rope_scaling: dict | None
    memory: MemoryBreakdown
    capacity: memory.KvCapacity
    fits: bool
    meets_profile: bool
    refusal: str | None  # why vLLM would refuse to start, if it would


def _rope_for(variant: Variant, max_model_len: int) -> dict | None:
    """Qwen's YaRN setting for a context past the native window (None when not needed)."""
    if max_model_len <= variant.spec.max_position_embeddings or variant.is_2507:
        return None
    factor = 2.0 if max_model_len <= 2 * YARN_ORIGINAL_MAX else float(YARN_MAX_FACTOR)
    return {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": YARN_ORIGINAL_MAX}


def _context_ceiling(variant: Variant, allow_yarn: bool) -> int:
    native = variant.spec.max_position_embeddings
    if variant.is_2507 or not allow_yarn:
        return native
    return max(native, YARN_ORIGINAL_MAX * YARN_MAX_FACTOR)


def _round_context(tokens: int) -> int:
    """A readable max_model_len: multiples of 1024 from 2048 up, else of the block size."""
    if tokens >= 2048:
        return tokens // 1024 * 1024
    return tokens // memory.BLOCK_SIZE * memory.BLOCK_SIZE


def _evaluate(
    variant: Variant,
    kv: str,
    tp: int,
    gpus: tuple[Gpu, ...],
    profile: Profile,
    pins: Pins,
    cal: memory.Calibration = memory.CALIBRATION,
) -> _Candidate:
    mns = pins.max_num_seqs or profile.max_num_seqs
    mnbt = pins.max_num_batched_tokens or max(profile.max_num_batched_tokens, mns)
    eager = profile.enforce_eager if pins.enforce_eager is None else pins.enforce_eager
    ceiling = _context_ceiling(variant, profile.allow_yarn or bool(pins.max_model_len))
    target = pins.max_model_len or min(profile.max_model_len, ceiling)
    rope = _rope_for(variant, target)
    smallest = min(gpus, key=lambda g: (g.total_bytes, g.free_bytes))
    total = smallest.total_bytes
    graphs = memory.cudagraph_bytes(variant, mns, mnbt, eager, cal=cal) - memory.cudagraph_estimate_bytes(
        variant, mns, mnbt, eager, cal=cal
    )
    gmu_cap = min(
        memory.max_utilization(g.total_bytes, g.free_bytes, graphs, FREE_MEMORY_MARGIN_BYTES, cal) for g in gpus
    )
    gmu = pins.gpu_memory_utilization or min(profile.gpu_memory_utilization, gmu_cap)

    def budget(rope_scaling: dict | None) -> MemoryBreakdown:
        rope_max = (
            int(rope_scaling["original_max_position_embeddings"] * rope_scaling["factor"]) if rope_scaling else None
        )
        return memory.breakdown(
            variant,
            total,
            gmu,
            tp,
            mnbt,
            mns,
            eager,
            rope_max,
            cal,
            kv_cache_dtype=kv,
            compute_capability=smallest.spec.compute_capability,
            compile_cache_warm=pins.compile_cache_warm,
        )

    mem = budget(rope)
    cap = memory.kv_capacity(mem.kv_cache_bytes, variant.spec, kv, tp, target)
    if pins.max_model_len:
        mml = pins.max_model_len
    else:
        by_concurrency = cap.num_blocks // profile.min_concurrency * memory.BLOCK_SIZE
        # No KV cache at all: keep the target, so the command shows what was asked for.
        mml = min(target, _round_context(by_concurrency)) if cap.num_blocks else target
        if mml < target and rope and mml <= variant.spec.max_position_embeddings:
            rope = None  # the reduced context no longer needs YaRN
            mem = budget(None)
    mml = max(mml, memory.BLOCK_SIZE)
    cap = memory.kv_capacity(mem.kv_cache_bytes, variant.spec, kv, tp, mml)
    derived = _derived_context(variant, rope)
    cap = replace(cap, max_model_len_limit=min(cap.max_model_len_limit, max(derived, mml)))
    refusal = _refusal(variant, kv, tp, mml, rope, ceiling, pins, mem, cap, gpus, gmu, graphs)
    meets = cap.max_concurrency >= profile.min_concurrency and mml >= min(target, profile.max_model_len)
    usable = pins.max_model_len is not None or mml >= min(profile.min_max_model_len, ceiling)
    return _Candidate(
        variant,
        kv,
        tp,
        gpus,
        gmu,
        gmu_cap,
        mnbt,
        mns,
        eager,
        mml,
        rope,
        mem,
        cap,
        fits=refusal is None and usable,
        meets_profile=meets and refusal is None,
        refusal=refusal,
    )


def _derived_context(variant: Variant, rope: dict | None) -> int:
    """vLLM's derived max_model_len: max_position_embeddings, or original × factor with YaRN."""
    if rope:
        return int(rope["original_max_position_embeddings"] * rope["factor"])
    return variant.spec.max_position_embeddings


def _refusal(variant, kv, tp, mml, rope, ceiling, pins, mem, cap, gpus, gmu, graphs) -> str | None:
    """The reason vLLM would refuse to start (or die while starting), or None."""
    derived = _derived_context(variant, rope)
    if mml > max(derived, ceiling):
        return (
            f"max_model_len {mml} is longer than the model's context ({max(derived, ceiling)}"
            f"{' with YaRN' if rope else ''}); vLLM refuses it"
        )
    if mem.kv_cache_bytes <= 0:
        return (
            f"the weights ({_gib(mem.weights_bytes)}) and overheads "
            f"({_gib(mem.activation_bytes + mem.non_torch_bytes)}) leave no KV cache within "
            f"gpu_memory_utilization {gmu:g} × {_gib(mem.total_bytes)}"
        )
    blocks_needed = math.ceil(mml / memory.BLOCK_SIZE)
    if cap.num_blocks < blocks_needed:
        needed = blocks_needed * memory.BLOCK_SIZE * memory.kv_bytes_per_token(variant.spec, kv, tp)
        return (
            f"one {mml}-token sequence needs {_gib(needed)} of KV cache but only "
            f"{_gib(mem.kv_cache_bytes)} is left; the longest that fits is "
            f"{cap.max_model_len_limit} (vLLM's estimated maximum model length)"
        )
    for g in gpus:
        if pins.gpu_memory_utilization and mem.requested_bytes > g.free_bytes - mem.cuda_context_bytes:
            return (
                f"gpu_memory_utilization {gmu:g} asks for {_gib(mem.requested_bytes)} but only "
                f"{_gib(g.free_bytes - mem.cuda_context_bytes)} is free on GPU {g.index} once "
                f"vLLM's CUDA context exists; vLLM refuses to start"
            )
        if mem.requested_bytes + graphs + mem.cuda_context_bytes > g.free_bytes:
            return (
                f"gpu_memory_utilization {gmu:g} plus CUDA graphs ({_gib(graphs)}) exceeds the "
                f"{_gib(g.free_bytes)} free on GPU {g.index}: out of memory while capturing graphs"
            )
    return None


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


# ------------------------------------------------------------------------------------------
# Search


def _tp_sizes(variant: Variant, gpu_count: int, policy: str, pinned: int | None) -> list[int]:
    if pinned:
        problem = memory.tp_problem(variant, pinned)
        if problem:
            valid = memory.valid_tp_sizes(variant, 64)
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
    sizes = memory.valid_tp_sizes(variant, gpu_count)
    return sorted(sizes, reverse=(policy == "most"))


def choose_gpus(gpus: Sequence[Gpu], count: int) -> tuple[Gpu, ...]:
    """The TP group of `count` GPUs: one kind, best linked, most free memory (hardware.best_group)."""
    from qwdeploy import hardware

    return hardware.best_group(gpus, count)


def _kv_options(profile: Profile, pins: Pins, gpus: Sequence[Gpu]) -> list[str]:
    if pins.kv_cache_dtype:
        return [pins.kv_cache_dtype]
    fp8_ok = all(g.spec.fp8_native for g in gpus)
    return [kv for kv in profile.kv_cache_dtype if kv == "auto" or fp8_ok] or ["auto"]


def plan(
    variants: Sequence[Variant],
    profile: Profile,
    gpus: Sequence[Gpu],
    pins: Pins = Pins(),
    local: bool = False,
    cal: memory.Calibration = memory.CALIBRATION,
    calibration_note: str | None = None,
) -> Plan:
    """The configuration to run, chosen among `variants` (in order of preference).

    `cal` replaces the default overhead calibration (e.g. corrected by serve's records of what
    vLLM really got on this machine); `calibration_note` then says so in the plan's notes.
    """
    if not gpus:
        raise QwdeployError("no GPUs to plan for", hint="name them: --gpu H100 --num-gpus 1")
    if pins.max_num_seqs and pins.max_num_batched_tokens and pins.max_num_batched_tokens < pins.max_num_seqs:
        raise QwdeployError(
            "--max-num-batched-tokens must be at least --max-num-seqs",
            hint="vLLM refuses max_num_batched_tokens < max_num_seqs",
        )
    candidates = []
    for tp_first in _search_order(variants, profile, gpus, pins, cal):
        candidates.append(tp_first)
        if tp_first.meets_profile:
            break
    best = next((c for c in candidates if c.meets_profile), None)
    if best is None:
        best = max(candidates, key=_fallback_rank)
    alternatives = () if best.meets_profile else _alternatives(best, variants, profile, gpus, pins, cal)
    result = _to_plan(best, profile, pins, local, alternatives)
    if calibration_note:
        result = replace(result, notes=result.notes + (calibration_note,))
    return result


def _search_order(variants, profile, gpus, pins, cal):
    """Candidates in the order the profile prefers them: GPUs count first, then weights, then KV."""
    kv_options = _kv_options(profile, pins, gpus)
    tp_lists = {
        v.repo_id: _tp_sizes(v, len(gpus), profile.tensor_parallel, pins.tensor_parallel_size) for v in variants
    }
    all_tps = sorted({tp for tps in tp_lists.values() for tp in tps}, reverse=(profile.tensor_parallel == "most"))
    for tp in all_tps:
        group = choose_gpus(gpus, tp)
        for v in variants:
            if tp not in tp_lists[v.repo_id]:
                continue
            for kv in kv_options:
                yield _evaluate(v, kv, tp, group, profile, pins, cal)


def _fallback_rank(c: _Candidate):
    """Among candidates that miss the profile: fitting first, then the most context and KV."""
    return (c.fits, c.max_model_len if c.fits else c.capacity.max_model_len_limit, c.memory.kv_cache_bytes, -c.tp)


# ------------------------------------------------------------------------------------------
# Alternatives when the plan falls short


def _alternatives(best: _Candidate, variants, profile, gpus, pins, cal) -> tuple[Alternative, ...]:
    from qwdeploy import catalog

    options: list[tuple[str, _Candidate]] = []
    loose = replace(pins, max_model_len=None)
    family = catalog.family(best.variant.base) if best.variant.local_path is None else [best.variant]
    for v in family:
        if v.repo_id == best.variant.repo_id:
            continue
        c = _smallest_fitting(v, best.kv_cache_dtype, gpus, profile, loose, cal)
        if c is not None:
            options.append((f"{v.weight_dtype} weights ({v.repo_id})", c))
    if best.kv_cache_dtype == "auto" and all(g.spec.fp8_native for g in gpus):
        c = _evaluate(best.variant, "fp8", best.tp, best.gpus, profile, loose, cal)
        options.append(("fp8 KV cache (halves KV bytes per token)", c))
    for tp in memory.valid_tp_sizes(best.variant, 8):
        if tp <= best.tp:
            continue
        more = tuple(replace(best.gpus[0], index=i) for i in range(tp))
        c = _evaluate(best.variant, best.kv_cache_dtype, tp, more, profile, loose, cal)
        if c.fits:
            options.append((f"{tp} × {best.gpus[0].name} (tensor parallel {tp})", c))
            break
    limit = best.capacity.max_model_len_limit
    if limit >= memory.BLOCK_SIZE:
        shorter = replace(pins, max_model_len=_round_context(limit) or limit)
        c = _evaluate(best.variant, best.kv_cache_dtype, best.tp, best.gpus, profile, shorter, cal)
        options.append((f"max_model_len {c.max_model_len} (the longest that fits)", c))
    ranked = sorted(
        options,
        key=lambda o: (not o[1].fits, not o[1].meets_profile, o[1].tp, WEIGHT_QUALITY.index(o[1].variant.weight_dtype)),
    )
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
        if c.capacity.num_blocks
    )  # leave out what holds no KV at all


def _smallest_fitting(variant, kv, gpus, profile, pins, cal) -> _Candidate | None:
    """The fewest of these GPUs on which `variant` meets the profile (else fits, else the last)."""
    tried = [
        _evaluate(variant, kv, tp, choose_gpus(gpus, tp), profile, pins, cal)
        for tp in memory.valid_tp_sizes(variant, len(gpus))
    ]
    return (
        next((c for c in tried if c.meets_profile), None)
        or next((c for c in tried if c.fits), None)
        or (tried[-1] if tried else None)
    )


# ------------------------------------------------------------------------------------------
# Reasons


def _to_plan(c: _Candidate, profile: Profile, pins: Pins, local: bool, alternatives: tuple[Alternative, ...]) -> Plan:
    choices = _reasons(c, profile, pins)
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
    others = [g for g in c.gpus if g.other_processes_bytes]
    for g in others:
        notes.append(
            f"GPU {g.index}: other processes hold {_gib(g.other_processes_bytes)}; "
            f"gpu_memory_utilization is capped at {c.gmu_cap:g} so vLLM's start check passes."
        )
    if c.gpus[0].spec.total_source == "estimated" and not local:
        notes.append(
            f"{c.gpus[0].name}: memory total estimated from the datasheet (not measured); "
            f"plan on the machine itself for exact figures."
        )
    if c.variant.weight_dtype == "fp8" and not c.gpus[0].spec.fp8_native:
        notes.append(
            f"{c.gpus[0].name} has no FP8 tensor cores: vLLM runs FP8 weights as "
            f"w8a16 through Marlin (memory savings, slower prefill)."
        )
    if c.variant.weight_dtype == "fp8" and c.variant.spec.quantization and not c.eager:
        notes.append(
            "FP8 block-quantized checkpoints JIT-compile DeepGEMM kernels on a first start "
            "(during profiling and CUDA-graph capture, even with VLLM_DEEP_GEMM_WARMUP=skip: "
            "minutes); `qwdeploy warm` and serve keep them in a persistent cache."
        )
    if c.memory.cudagraph_in_budget_bytes:
        notes.append(
            f"Qwen3-MoE runs on vLLM {memory.VLLM_VERSION}'s V1 model runner: its CUDA-graph "
            f"estimate ({_gib(c.memory.cudagraph_in_budget_bytes)}) comes out of the KV budget, "
            f"the rest of the graph pool ({_gib(c.memory.cudagraph_on_top_bytes)}) on top."
        )
    elif c.memory.cudagraph_bytes:
        notes.append(
            f"CUDA graphs ({_gib(c.memory.cudagraph_bytes)}) are allocated on top of "
            f"gpu_memory_utilization × total in vLLM {memory.VLLM_VERSION}."
        )
    if not c.eager and not pins.compile_cache_warm:
        notes.append(
            "KV figures assume a first start: a restart with a warm compile cache skips "
            "torch.compile's memory peak and gets a little more KV cache (--compile-cache warm)."
        )
    return Plan(
        variant=c.variant,
        profile=profile,
        gpus=c.gpus,
        tensor_parallel_size=c.tp,
        max_model_len=c.max_model_len,
        gpu_memory_utilization=c.gmu,
        kv_cache_dtype=c.kv_cache_dtype,
        max_num_seqs=c.mns,
        max_num_batched_tokens=c.mnbt,
        enforce_eager=c.eager,
        enable_prefix_caching=profile.enable_prefix_caching,
        rope_scaling=c.rope_scaling,
        memory=c.memory,
        capacity=c.capacity,
        fits=c.fits,
        local=local,
        choices=tuple(choices),
        notes=tuple(notes),
        alternatives=alternatives,
        meets_profile=c.meets_profile,
    )


def _reasons(c: _Candidate, profile: Profile, pins: Pins) -> list[Choice]:
    v, m, cap = c.variant, c.memory, c.capacity
    p = profile.name
    out = [
        Choice(
            "model",
            v.name,
            f"{v.weight_dtype} weights ({_gib(m.weights_bytes)} per GPU at TP "
            f"{c.tp}); profile {p} prefers {', '.join(profile.weights)}",
        )
    ]
    if pins.tensor_parallel_size:
        out.append(Choice("tensor_parallel_size", c.tp, "set on the command line"))
    else:
        policy = (
            "every suitable GPU: decode speed grows with the bandwidth of more GPUs"
            if profile.tensor_parallel == "most"
            else "the fewest GPUs that meet the profile"
        )
        out.append(
            Choice(
                "tensor_parallel_size",
                c.tp,
                f"{policy}; {v.spec.num_attention_heads} heads and {v.spec.num_key_value_heads} KV heads allow it",
            )
        )
    if pins.max_model_len:
        out.append(Choice("max_model_len", c.max_model_len, "set on the command line"))
    elif c.max_model_len >= profile.max_model_len or c.max_model_len >= _context_ceiling(v, profile.allow_yarn):
        out.append(
            Choice(
                "max_model_len",
                c.max_model_len,
                f"the profile's target; the KV cache holds {cap.max_concurrency:.1f} such "
                f"sequences (at least {profile.min_concurrency} wanted)",
            )
        )
    else:
        out.append(
            Choice(
                "max_model_len",
                c.max_model_len,
                f"the longest that keeps {profile.min_concurrency} full-length sequences in "
                f"the KV cache (profile target {profile.max_model_len})",
            )
        )
    if c.rope_scaling:
        out.append(
            Choice(
                "hf_overrides",
                "YaRN factor " + f"{c.rope_scaling['factor']:g}",
                f"Qwen's YaRN setting: {c.max_model_len} tokens exceed the native {v.spec.max_position_embeddings}",
            )
        )
    gmu_reason = (
        "set on the command line"
        if pins.gpu_memory_utilization
        else f"profile {p}; the most these GPUs allow is {c.gmu_cap:g} (free memory, vLLM's "
        f"CUDA context and {_gib(m.cudagraph_bytes)} of CUDA graphs on top)"
    )
    out.append(Choice("gpu_memory_utilization", c.gmu, gmu_reason))
    kv_reason = (
        "set on the command line"
        if pins.kv_cache_dtype
        else "model dtype"
        if c.kv_cache_dtype == "auto"
        else "fp8 halves KV bytes per token (the GPU supports it)"
    )
    out.append(
        Choice(
            "kv_cache_dtype",
            c.kv_cache_dtype,
            f"{kv_reason}; {memory.kv_bytes_per_token(v.spec, c.kv_cache_dtype, c.tp):,} bytes per token per GPU",
        )
    )
    out.append(
        Choice(
            "max_num_seqs",
            c.mns,
            "set on the command line" if pins.max_num_seqs else f"profile {p}; also sets the CUDA-graph sizes",
        )
    )
    out.append(
        Choice(
            "max_num_batched_tokens",
            c.mnbt,
            "set on the command line"
            if pins.max_num_batched_tokens
            else f"profile {p}; prefill chunk size, sets the activation peak ({_gib(m.activation_bytes)})",
        )
    )
    out.append(
        Choice(
            "enforce_eager",
            c.eager,
            "set on the command line"
            if pins.enforce_eager is not None
            else "CUDA graphs decode several times faster"
            if not c.eager
            else f"profile {p}",
        )
    )
    out.append(Choice("enable_prefix_caching", profile.enable_prefix_caching, f"profile {p}"))
    return out
