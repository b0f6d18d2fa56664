"""vLLM's startup log, read: the phase it is in, what it really got, how long each part took.

The one reader of vLLM's output: `serve` follows a log as it grows (`LogParser.feed`, one line at
a time, timed by arrival), `warm` and the calibration read finished ones (`parse`). Pure: lines
in, a `StartupReport` out. Reads the GPU wording of vLLM 0.26 ("Model loading took", "Available KV
cache memory", "GPU KV cache size", the "Actual usage is ..." breakdown, reworded in 0.27) and the
CPU wording of vLLM 0.32 ("Initializing model took", "Explicitly set (X/T) GiB for KV cache").
GiB figures in vLLM's log are rounded to 0.01 GiB; they become bytes. Failures: vllm.failures.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

from qwdeploy.units import GiB
from qwdeploy.vllm import failures
from qwdeploy.vllm.failures import Failure, Seen
from qwdeploy.vllm.phases import (
    API_SERVER,
    COMPILING,
    ENGINE,
    GRAPHS,
    KV_CACHE,
    LOADING,
    ORDER,
    PROFILING,
    SERVING,
    STARTING,
    WARMUP,
)

_STAMP = re.compile(r"\b(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) ")
_NUM = r"([\d.]+)"
_INT = r"([\d,]+)"


@dataclass(frozen=True)
class Phase:
    name: str
    t: float | None  # seconds since the process started, when the caller timed the line
    stamp: int | None  # the log line's own time (seconds within the year), when it has one


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
    kv_profile_s: float | None = None  # "Initial profiling/warmup run took X s"
    init_engine_s: float | None = None  # "init engine (profile, create kv cache, ...) took X s"
    server_url: str | None = None  # "Starting vLLM server on http://..."
    startup_complete: bool = False  # uvicorn's "Application startup complete."
    phases: tuple[Phase, ...] = ()
    failure: Failure | None = None
    cache_hit_lines: tuple[str, ...] = ()  # vLLM's own lines saying it found its compile cache
    compiled_from_scratch: int = 0  # "Compiling a graph for compile range" lines (GPU)
    compile_window_s: float | None = None  # timed: first compile line to the last compile result

    @property
    def phase(self) -> str:
        return self.phases[-1].name if self.phases else STARTING

    def phase_seconds(self) -> dict[str, float]:
        """Seconds spent in each phase (arrival times when timed, else the log's own stamps)."""
        out: dict[str, float] = {}
        timed = all(p.t is not None for p in self.phases)
        for a, b in zip(self.phases, self.phases[1:], strict=False):
            start, end = (a.t, b.t) if timed else (a.stamp, b.stamp)
            if start is not None and end is not None and end >= start:
                out[a.name] = round(out.get(a.name, 0.0) + end - start, 2)
        return out


# (regex, phase it starts). The first match of each line wins; phases only move forward.
_PHASE_MARKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Initializing a V1 LLM engine"), ENGINE),
    (
        re.compile(r"Loading model from scratch|Starting to load model|Loading weights|Loading safetensors checkpoint"),
        LOADING,
    ),
    (
        re.compile(
            r"Dynamo bytecode transform|Using cache directory: .*torch\.compile"
            r"|Warming up model for the compilation|Start compiling function"
        ),
        COMPILING,
    ),
    (re.compile(r"torch\.compile took|Directly load AOT compilation|saved AOT compiled function to"), PROFILING),
    (re.compile(r"Initial profiling/warmup run took|Warming up done"), KV_CACHE),
    (re.compile(r"Capturing CUDA graphs"), GRAPHS),
    (re.compile(r"Graph capturing finished"), WARMUP),
    (re.compile(r"init engine \(profile, create kv cache, warmup model\) took"), API_SERVER),
    (re.compile(r"Starting vLLM server on http|Application startup complete"), SERVING),
)
# After the weights: compiling, unless eager (then the profile run comes next).
_LOADED = re.compile(r"Model loading took|Initializing model took")
# vLLM found this key's compile artefacts (loaded them, or found them and rebuilt from the
# Inductor kernel cache: CPU 0.32's AOT load failure) vs compiled from scratch.
CACHE_HIT = re.compile(
    r"Directly load AOT compilation from path|Directly load the compiled graph"
    r"|Compiling model again due to a load failure from"
)
CACHE_MISS = re.compile(r"Compiling a graph for compile range")
# torch.compile's own span (CPU prints no total): from its first line to its last result line.
_COMPILE_BEGINS = _PHASE_MARKS[2][0]
_COMPILE_ENDS = _PHASE_MARKS[3][0]


def _f(s: str) -> float:
    return float(s.rstrip("."))


def _i(s: str) -> int:
    return int(s.replace(",", ""))


def _bytes(gib: str) -> int:
    return round(_f(gib) * GiB)


Groups = tuple[Any, ...]
Values = dict[str, Any]


def _version(g: Groups, v: Values) -> None:
    v.setdefault("version", g[0])


def _eager(g: Groups, v: Values) -> None:
    v.setdefault("eager", g[0] == "True")


def _eager_warning(g: Groups, v: Values) -> None:
    v["eager"] = True


def _gpu_weights(g: Groups, v: Values) -> None:
    v.update(weights_bytes=_bytes(g[0]), weights_load_s=_f(g[1]))


def _gpu_kv(g: Groups, v: Values) -> None:
    v.update(kv_cache_bytes=_bytes(g[0]), device="cuda")


def _concurrency(g: Groups, v: Values) -> None:
    v.update(concurrency_tokens=_i(g[0]), max_concurrency=_f(g[1]))


def _cpu_kv(g: Groups, v: Values) -> None:
    v.update(kv_cache_bytes=_bytes(g[0]), node_total_bytes=_bytes(g[1]), device="cpu")


def _kv_tokens(g: Groups, v: Values) -> None:
    v.update(device=g[0].lower().replace("gpu", "cuda"), kv_cache_tokens=_i(g[1]))


def _free(g: Groups, v: Values) -> None:
    v.update(free_at_start_bytes=_bytes(g[0]), total_bytes=_bytes(g[1]))
    v.update(gpu_memory_utilization=_f(g[2]), requested_bytes=_bytes(g[3]))


def _usage(g: Groups, v: Values) -> None:
    v.setdefault("weights_bytes", _bytes(g[0]))
    v.update(activation_bytes=_bytes(g[1]), non_torch_bytes=_bytes(g[2]), cudagraph_bytes=_bytes(g[3]))


def _consumed(g: Groups, v: Values) -> None:
    """vLLM 0.27+: consumed = weights + non-torch + the runner's buffers; peak = activation + the
    graph estimate taken from the budget (split in `_split_consumed`)."""
    v.update(consumed_bytes=_bytes(g[0]), peak_bytes=_bytes(g[1]), cudagraph_bytes=_bytes(g[2]))


def _split_consumed(v: Values) -> Values:
    if "consumed_bytes" not in v or "weights_bytes" not in v:
        return v
    activation = v["peak_bytes"] - v.get("cudagraph_estimate_bytes", 0)
    return {**v, "non_torch_bytes": v["consumed_bytes"] - v["weights_bytes"], "activation_bytes": activation}


def _graphs(g: Groups, v: Values) -> None:
    v["graph_capture_s"] = _f(g[0])
    if g[1] is not None:
        v.setdefault("cudagraph_bytes", _bytes(g[1]))


def _number(key: str, convert: Callable[[str], Any] = _f) -> Callable[[Groups, Values], None]:
    def read(g: Groups, v: Values) -> None:
        v[key] = convert(g[0])

    return read


def _flag(key: str, value: Any) -> Callable[[Groups, Values], None]:
    def read(g: Groups, v: Values) -> None:
        v[key] = value

    return read


_FIGURES: tuple[tuple[re.Pattern[str], Callable[[Groups, Values], None]], ...] = (
    (re.compile(r"Initializing a V1 LLM engine \(v([\w.+-]+)\)"), _version),
    (re.compile(r"version (\d+\.\d+\.\d+[\w.+-]*)\s*$"), _version),
    (re.compile(r"enforce_eager=(True|False)"), _eager),
    (re.compile(r"Enforce eager set"), _eager_warning),
    (re.compile(r"Using max model len (\d+)"), _number("max_model_len", int)),
    (re.compile(rf"Model loading took {_NUM} GiB(?: memory)? and {_NUM} seconds"), _gpu_weights),
    (re.compile(rf"Initializing model took {_NUM} seconds"), _number("weights_load_s")),
    (re.compile(rf"Available KV cache memory: {_NUM} GiB"), _gpu_kv),
    (re.compile(rf"(?:Explicitly|Auto) set \({_NUM}/{_NUM}\) GiB for KV cache on node"), _cpu_kv),
    (re.compile(rf"(GPU|CPU) KV cache size: {_INT} tokens"), _kv_tokens),
    (re.compile(rf"Maximum concurrency for {_INT} tokens per request: {_NUM}x"), _concurrency),
    (
        re.compile(
            rf"Free memory on device\S*(?: \S+)? \({_NUM}/{_NUM} GiB\) on startup\. "
            rf"Desired GPU memory utilization is \({_NUM}, {_NUM} GiB\)"
        ),
        _free,
    ),
    (
        re.compile(
            rf"Actual usage is {_NUM} GiB for weight, {_NUM} GiB for peak activation, "
            rf"{_NUM} GiB for non-torch memory, and {_NUM} GiB for CUDAGraph memory"
        ),
        _usage,
    ),
    (
        re.compile(
            rf"Actual usage is {_NUM} GiB for consumed memory \(weights \+ non-torch\), {_NUM} GiB for peak "
            rf"activation, and {_NUM} GiB for CUDAGraph memory"
        ),
        _consumed,
    ),
    (
        re.compile(rf"CUDA graph pool memory: [\d.]+ GiB \(actual\), {_NUM} GiB \(estimated\)"),
        _number("cudagraph_estimate_bytes", _bytes),
    ),
    (re.compile(rf"Graph capturing finished in {_NUM} secs?(?:, took {_NUM} GiB)?"), _graphs),
    (re.compile(rf"torch\.compile took {_NUM} s in total"), _number("compile_s")),
    (re.compile(rf"Initial profiling/warmup run took {_NUM} s"), _number("kv_profile_s")),
    (re.compile(rf"init engine \(profile, create kv cache, warmup model\) took {_NUM} s"), _number("init_engine_s")),
    (re.compile(r"Starting vLLM server on (http://\S+)"), _number("server_url", str)),
    (re.compile(r"Application startup complete"), _flag("startup_complete", True)),
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
        self._v: Values = {}
        self._phases: list[Phase] = []
        self._failures: dict[str, Seen] = {}  # the first line of each failure kind
        self._tracebacks = failures.Tracebacks()
        self._exception: str | None = None
        self._cache_hits: list[str] = []
        self._cache_misses = 0
        self._compile: list[float] = []  # [begin, end] arrival times

    @property
    def phase(self) -> str:
        return self._phases[-1].name if self._phases else STARTING

    def feed(self, line: str, t: float | None = None) -> str | None:
        """Read one line (`t`: seconds since start, if timed). Returns the new phase, if any."""
        line = line.rstrip("\n")
        for rx, read in _FIGURES:
            m = rx.search(line)
            if m:
                read(m.groups(), self._v)
        self._failure(line)
        self._cache_evidence(line)
        self._compile_window(line, t)
        return self._phase(line, t)

    def _compile_window(self, line: str, t: float | None) -> None:
        if t is None:
            return
        if not self._compile and _COMPILE_BEGINS.search(line):
            self._compile = [t, t]
        elif self._compile and _COMPILE_ENDS.search(line):
            self._compile[1] = t

    def _phase(self, line: str, t: float | None) -> str | None:
        new = next((name for rx, name in _PHASE_MARKS if rx.search(line)), None)
        if new is None and _LOADED.search(line):
            new = PROFILING if self._v.get("eager") else COMPILING
        if new is None or ORDER.index(new) <= ORDER.index(self.phase):
            return None
        self._phases.append(Phase(new, t, _stamp(line)))
        return new

    def _failure(self, line: str) -> None:
        frames = self._tracebacks.feed(line)
        for kind, rx in failures.PATTERNS:
            if kind not in self._failures:
                m = rx.search(line)
                if m:
                    self._failures[kind] = Seen(m, line.strip(), self.phase, frames=frames)
        if self._exception is None and " WARNING " not in line and not failures.WRAPPERS.search(line):
            m = failures.EXCEPTION.search(line)
            if m and not m.group(1).endswith("Warning"):
                self._exception = f"{m.group(1)}: {m.group(2).strip()}"

    def _cache_evidence(self, line: str) -> None:
        if CACHE_HIT.search(line):
            self._cache_hits.append(line.strip()[:300])
        if CACHE_MISS.search(line):
            self._cache_misses += 1

    def report(self) -> StartupReport:
        v = _split_consumed(self._v)
        figures = {k: v[k] for k in _REPORTED if k in v}
        return StartupReport(
            **figures,
            vllm_version=v.get("version"),
            enforce_eager=v.get("eager"),
            startup_complete=bool(v.get("startup_complete")),
            phases=tuple(self._phases),
            failure=self._classify(),
            cache_hit_lines=tuple(self._cache_hits),
            compiled_from_scratch=self._cache_misses,
            compile_window_s=round(self._compile[1] - self._compile[0], 2) if self._compile else None,
        )

    def _classify(self) -> Failure | None:
        cpu = self._v.get("device") == "cpu"
        for kind in failures.PRIORITY:
            if kind in self._failures:
                seen = self._failures[kind]
                return failures.explain(kind, replace(seen, cpu=cpu))
        if self._exception:
            return Failure(
                failures.UNKNOWN, self._exception, "see vLLM's log for the whole traceback", line=self._exception
            )
        return None


_SET_BY_REPORT = ("vllm_version", "enforce_eager", "startup_complete", "phases", "failure", "cache_hit_lines")
_REPORTED = tuple(f.name for f in fields(StartupReport) if f.name not in _SET_BY_REPORT)


def parse(lines: Iterable[str], timed: bool = False) -> StartupReport:
    """A whole log (e.g. a file's lines) -> what it says. `timed`: line i arrived at i seconds."""
    p = LogParser()
    for i, line in enumerate(lines):
        # progress bars (CUDA graph capture) rewrite one line with carriage returns
        p.feed(line.split("\r")[0] if "\r" in line and "Capturing" not in line else line, float(i) if timed else None)
    return p.report()


def start_phases(report: StartupReport, ready_s: float | None) -> dict[str, float]:
    """Seconds per start phase, as a start is recorded (compile-cache manifest, `warm --json`):
    vLLM's own figures where it prints them, else the time between its phase lines."""
    arrived = {p.name: p.t for p in report.phases}
    spent = report.phase_seconds()
    out = {
        "import_s": arrived.get(ENGINE),
        "weights_s": report.weights_load_s,
        "compile_s": report.compile_s if report.compile_s is not None else report.compile_window_s,
        "kv_profile_s": report.kv_profile_s,
        "graph_capture_s": report.graph_capture_s,
        "warmup_s": spent.get(WARMUP),
        "init_engine_s": report.init_engine_s,
        "ready_s": None if ready_s is None else round(ready_s, 2),
    }
    if report.weights_bytes and report.weights_load_s:
        weights_gib = round(report.weights_bytes / GiB, 2)
        out["weights_gib"] = weights_gib
        out["load_gib_per_s"] = round(weights_gib / report.weights_load_s, 2)
    return {k: float(val) for k, val in out.items() if val is not None}
