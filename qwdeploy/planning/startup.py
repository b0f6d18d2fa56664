"""How long a vLLM start takes, phase by phase: imports, weights, compile, graphs, DeepGEMM JIT. Pure.

Fitted on real vLLM 0.26 starts on an H100 (bench/results/coldstart_gpu, tests/data/vllm_runs);
`qwdeploy serve` records the real phases, and a warm restart reuses the compile cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.memory import runs_v1_model_runner
from qwdeploy.planning.plan import Plan
from qwdeploy.units import GB, GiB

PROFILED_FULL_GRAPHS = 2  # vLLM 0.29+ V2 runner: FULL graphs captured while profiling (_FULL_GRAPH_PROFILING_SAMPLES)
# Order of DeepGEMM warm-up thoroughness (vllm/envs.py VLLM_DEEP_GEMM_WARMUP choices).
DEEP_GEMM_MODES = ("skip", "relax", "full")
# A first FP8-block start on SM90+ with an empty DeepGEMM cache JIT-compiles a kernel set for
# every M shape it runs, even with VLLM_DEEP_GEMM_WARMUP=skip. Measured on the H100
# (g03, Qwen3-8B-FP8, warm-up skip, 51 capture sizes): the profiling run took 20.3 s (bf16 g02:
# 0.7 s) and PIECEWISE graph capture 150 s (bf16: 6 s), i.e. 19.6 s plus 2.82 s per CUDA-graph
# size. "full" adds every other M up to max_num_batched_tokens: unmeasured.
DEEP_GEMM_PROFILE_JIT_S = 19.6
DEEP_GEMM_JIT_S_PER_GRAPH_SIZE = (150.0 - 6.0) / 51
# "relax" (vLLM's default) also runs a heuristic M set up to max_num_batched_tokens before serving:
# Qwen3-8B-FP8 took 236 s more than the skip estimate at mnbt 4096 (m_q8bfp8_lowlatency, LLM
# class) and 257 s more at 8192 (bench/results/coldstart_gpu fp8-vanilla, 586.6 s vs bf16 165.9 s).
DEEP_GEMM_RELAX_BASE_S = 236.0 - (257.0 - 236.0)  # 215 s at mnbt 0
DEEP_GEMM_RELAX_S_PER_TOKEN = (257.0 - 236.0) / 4096


@dataclass(frozen=True)
class StartCosts:
    """Seconds of each start phase, fitted on real vLLM 0.26 starts on an H100."""

    # Cold start pieces, from the H100 runs (groundtruth 01-13): `import vllm` ~20 s; engine
    # set-up, profiling and KV allocation ~20 s plus 0.75 s per GiB of weights even with dummy
    # weights (ready minus init: 8B 29 s, 32B 57 s; init minus compile and graphs: 21 s, 28 s);
    # torch.compile cold 15 s + 0.7 s a layer (8B: 38.6 s, 32B: 61.6 s), warm ~8 s; graph
    # capture ~3.3 ms per layer and capture size (8B, 51 sizes: 6 s; 32B: 14 s).
    import_s: float = 20.0
    engine_setup_s: float = 20.0
    engine_setup_s_per_gib: float = 0.75
    # A warm restart through `qwdeploy serve` (API server, forked engine, the plan's own cache
    # root with its Triton and model-info caches) skips the fixed part: Qwen3-8B ready in 48.2 s
    # = import 20 + 0.75 × 15.3 GiB + dummy load 2.5 + compile 8 + capture 6.1
    # (bench/results/coldstart_gpu). Starts through vLLM's LLM class with vLLM's default caches
    # JIT the sampler again after graph capture (g16: 22 s).
    llm_class_sampler_jit_s: float = 20.0
    # Eager starts skip most of that set-up (no compiled warm-up): 8B eager ready in 45 s,
    # 14B eager in 36 s (g11), import included.
    eager_setup_s: float = 12.0
    compile_cold_base_s: float = 15.0
    compile_cold_s_per_layer: float = 0.7
    compile_warm_s: float = 8.0
    graph_capture_s_per_layer_size: float = 0.0033
    # Reading safetensors from a local NVMe disk (a stated assumption; serve reports the real one).
    disk_bandwidth_gbps: float = 2.0
    # load_format=dummy (the validation runs): random init on the GPU, ~2.5 s.
    dummy_load_s: float = 2.5


START_COSTS = StartCosts()


def cold_start_s(plan: Plan, eff: StartCosts = START_COSTS, weights_from_disk: bool = True) -> dict[str, Any]:
    """Seconds of each phase from process start to ready, cold and warm compile cache."""
    layers = plan.variant.spec.num_hidden_layers
    total_weight_bytes = plan.memory.weights_bytes * plan.tensor_parallel_size
    load = total_weight_bytes / (eff.disk_bandwidth_gbps * GB) if weights_from_disk else eff.dummy_load_s
    eager = plan.enforce_eager
    sizes = len(plan.cudagraph_capture_sizes)
    # the ranks set up side by side: one GPU's weights (Qwen3-32B at TP 2 on 2 × H200, serve with
    # dummy weights: ready in 122.8 s cold and 48.7 s warm; per GPU this predicts 136 and 64 s)
    per_gpu = plan.memory.weights_bytes
    setup = eff.eager_setup_s if eager else eff.engine_setup_s + eff.engine_setup_s_per_gib * per_gpu / GiB
    compile_cold = eff.compile_cold_base_s + eff.compile_cold_s_per_layer * layers
    graphs = eff.graph_capture_s_per_layer_size * layers * sizes * captures(plan)
    return {
        "import_s": eff.import_s,
        "engine_setup_s": round(setup, 1),
        "engine_setup_warm_s": round(setup if eager else setup - eff.engine_setup_s, 1),
        "load_weights_s": round(load, 1),
        "compile_cold_s": 0.0 if eager else round(compile_cold, 1),
        "compile_warm_s": 0.0 if eager else eff.compile_warm_s,
        "graph_capture_s": 0.0 if eager else round(graphs, 1),
        "deep_gemm_jit_cold_s": round(deep_gemm_jit_s(plan), 1),
        "disk_bandwidth_gbps_assumed": eff.disk_bandwidth_gbps if weights_from_disk else None,
    }


def captures(plan: Plan) -> float:
    """Graph captures a start makes, in units of the real one: from vLLM 0.29 the V2 runner first
    captures every PIECEWISE graph and the 2 largest FULL ones to measure them (cudagraph_utils.py
    `profile_cudagraph_memory`); a graph is taken to cost as long either time (not measured)."""
    if not plan.vllm.rules.v2_graphs_in_budget or runs_v1_model_runner(plan.variant, plan.vllm.rules):
        return 1.0
    sizes = plan.cudagraph_capture_sizes
    full = len([x for x in sizes if x <= plan.max_num_seqs])
    return 1.0 + (len(sizes) + min(PROFILED_FULL_GRAPHS, full)) / (len(sizes) + full) if sizes else 1.0


def start_seconds(
    phases: dict[str, Any], warm: bool, via_llm_class: bool = False, eff: StartCosts = START_COSTS
) -> float:
    """Seconds to ready from `cold_start_s` phases; `via_llm_class`: vLLM's LLM class with its
    default caches (the validation harness) instead of qwdeploy's server start."""
    parts: tuple[str, ...] = ("import_s", "load_weights_s", "graph_capture_s")
    if warm:
        parts += ("engine_setup_warm_s", "compile_warm_s")
    else:
        parts += ("engine_setup_s", "compile_cold_s", "deep_gemm_jit_cold_s")
    extra = eff.llm_class_sampler_jit_s if warm and via_llm_class and phases.get("compile_warm_s") else 0.0
    return round(sum(float(phases.get(p, 0.0) or 0.0) for p in parts) + extra, 1)


def uses_deep_gemm(plan: Plan) -> bool:
    """vLLM runs FP8 block-quantized linears through DeepGEMM on Hopper and Blackwell (SM90+)
    ("Selected DeepGemmFp8BlockScaledMMKernel", g03), JIT-compiling a kernel per new M shape."""
    return deep_gemm_runs(plan.variant, plan.gpu.spec.compute_capability)


def deep_gemm_runs(variant: Variant, compute_capability: tuple[int, int]) -> bool:
    """FP8 block weights on a GPU where vLLM picks DeepGEMM (SM90+; Ampere/Ada run them elsewhere)."""
    q = variant.spec.quantization
    return q is not None and q.scheme == "fp8-block" and tuple(compute_capability) >= (9, 0)


def deep_gemm_warmup(plan: Plan, override: str | None = None) -> str | None:
    """VLLM_DEEP_GEMM_WARMUP for this plan, or None where vLLM runs no DeepGEMM warm-up pass.

    The shapes of the profiling run and of CUDA-graph capture are JIT-compiled on a cold cache
    whatever this says (g03); the mode decides the rest, up to max_num_batched_tokens.
    low-latency: "relax", vLLM's heuristic set of prefill shapes before serving (~4-5 min once,
    into the cache: `qwdeploy warm`), so requests meet few JIT stalls; "full" (every M) is
    longer still and unmeasured, so it is only used when asked for. Other profiles: "skip";
    the remaining prefill sizes JIT on first use, then come from the cache. Eager mode has no
    warm-up pass (vLLM: "disabling ... JIT kernel warmup").
    """
    if not uses_deep_gemm(plan) or plan.enforce_eager:
        return None
    if override:
        if override not in DEEP_GEMM_MODES:
            raise ValueError(f"VLLM_DEEP_GEMM_WARMUP must be one of {DEEP_GEMM_MODES}, not {override!r}")
        return override
    return "relax" if plan.profile.name == "low-latency" else "skip"


def deep_gemm_jit_s(plan: Plan, mode: str | None = None) -> float:
    """Seconds a start adds JIT-compiling DeepGEMM kernels into an empty cache (0 if none).

    `mode` is VLLM_DEEP_GEMM_WARMUP (default: the plan's choice). "full" runs every M up to
    max_num_batched_tokens: unmeasured, so this gives its floor, the "relax" cost.
    """
    if not uses_deep_gemm(plan):
        return 0.0
    mode = mode or deep_gemm_warmup(plan) or "skip"
    sizes = plan.cudagraph_capture_sizes
    seconds = DEEP_GEMM_PROFILE_JIT_S + DEEP_GEMM_JIT_S_PER_GRAPH_SIZE * len(sizes)
    if mode in ("relax", "full"):
        seconds += DEEP_GEMM_RELAX_BASE_S + DEEP_GEMM_RELAX_S_PER_TOKEN * plan.max_num_batched_tokens
    return round(seconds, 1)


def predicted_start_s(plan: Plan, warm: bool, deep_gemm_cold: bool) -> float | None:
    """Seconds to ready from the plan's performance model (+ DeepGEMM JIT when it will run)."""
    perf = plan.performance or {}
    base = perf.get("predicted_warm_start_s" if warm else "predicted_cold_start_s")
    if base is None:
        base = start_seconds(cold_start_s(plan), warm)
    return round(base + (deep_gemm_jit_s(plan) if deep_gemm_cold else 0.0), 1)


def warm_after_cold_s(plan: Plan, measured_cold_s: float) -> float:
    """A warm restart's seconds from the cold start measured on this machine: that start less what
    a warm cache saves (set-up and compile; DeepGEMM is not counted, so this errs long when the
    cold start also JIT-compiled it). 32B TP 2 on 2 × H200: 122.8 s cold -> 51.0 s (48.7 measured)."""
    phases = cold_start_s(plan)
    saved = start_seconds(phases, warm=False) - float(phases["deep_gemm_jit_cold_s"]) - start_seconds(phases, warm=True)
    return round(max(measured_cold_s - saved, float(phases["import_s"])), 1)
