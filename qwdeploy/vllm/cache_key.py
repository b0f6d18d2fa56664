"""Which compile cache a plan uses: the settings vLLM hashes, the directory, the environment. Pure.

A restart (systemd Restart=, a rescheduled pod, `qwdeploy serve` again) is warm only when vLLM
finds its torch.compile artefacts, and on Hopper its DeepGEMM kernels, where it left them.
vLLM keys its compile cache by a hash of the config (vllm/config/vllm.py `compute_hash`): the
model, quantization, dtype, max_model_len, max_num_batched_tokens (scheduler), kv_cache_dtype
(cache config, which ignores gpu_memory_utilization), the parallel sizes and the compilation
config (whose CUDA-graph capture sizes follow max_num_seqs). qwdeploy gives each such key its
own directory, so the cache of one configuration is never evicted by another, a directory can be
copied into an image or a volume as a unit, and "warm or cold" is a question with an answer
before vLLM starts (qwdeploy.vllm.cache).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from qwdeploy.planning.memory import cudagraph_capture_sizes
from qwdeploy.planning.plan import Plan
from qwdeploy.planning.versions import target

# Settings vLLM hashes into its compile cache, in the order they are reported. Everything a
# plan sets that is not here (gpu_memory_utilization, enable_prefix_caching, the parsers,
# sampling defaults, the load format) leaves the cache valid.
KEY_SETTINGS = (
    "model",
    "quantization",
    "dtype",
    "max_model_len",
    "max_num_batched_tokens",
    "max_num_seqs",  # vLLM 0.29+ hashes it itself; before, only through the capture sizes
    "kv_cache_dtype",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "enforce_eager",
    "cudagraph_capture_sizes",
    "hf_overrides",
    "vllm_version",
    "device",
)
LOADER_MODULES = {"fastsafetensors": "fastsafetensors", "runai_streamer": "runai_model_streamer"}


def _model_id(plan: Plan) -> str:
    local = plan.variant.local_path
    return str(Path(local).resolve()) if local else plan.model


def key_fields(plan: Plan, vllm_version: str | None = None, device: str | None = None) -> dict[str, Any]:
    """The plan's settings that vLLM's compile cache depends on (nothing else), as the vLLM that
    runs it (`vllm_version`, default: the one planned for) hashes them."""
    version = vllm_version or plan.vllm.version
    running = target(version, "installed")
    rules = running.rules if running else plan.vllm.rules
    cc = plan.gpu.spec.compute_capability
    sizes = cudagraph_capture_sizes(plan.max_num_seqs, plan.max_num_batched_tokens, rules, cc)
    fields: dict[str, Any] = {
        "model": _model_id(plan),
        "quantization": plan.quantization,
        "dtype": plan.dtype,
        "max_model_len": plan.max_model_len,
        "max_num_batched_tokens": plan.max_num_batched_tokens,
        "kv_cache_dtype": plan.kv_cache_dtype,
        "tensor_parallel_size": plan.tensor_parallel_size,
        "pipeline_parallel_size": plan.pipeline_parallel_size,
        "enforce_eager": plan.enforce_eager,
        "cudagraph_capture_sizes": [] if plan.enforce_eager else sizes,
        "hf_overrides": plan.hf_overrides,
        "vllm_version": version,
        "device": device or plan.gpu.name,
    }
    if rules.max_num_seqs_in_compile_key:
        fields["max_num_seqs"] = plan.max_num_seqs
    return fields


def cache_key(fields: dict[str, Any]) -> str:
    """sha256 (hex) of the key fields, independent of dict order."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def key_change(old_plan: Plan, new_plan: Plan, vllm_version: str | None = None, device: str | None = None) -> list[str]:
    """The compile-cache settings that differ between two plans ([] = the cache is kept).

    Before vLLM 0.29, `max_num_seqs` is reported as `cudagraph_capture_sizes` only when it changes them.
    """
    a = key_fields(old_plan, vllm_version, device)
    b = key_fields(new_plan, vllm_version, device)
    return [k for k in KEY_SETTINGS if a.get(k) != b.get(k)]


def describe_change(changed: list[str]) -> str:
    """One sentence for a plan change: keeps the cache, or what makes the next start cold."""
    if not changed:
        return "keeps the compile cache (gpu_memory_utilization and the like are not in vLLM's key)"
    return "changes " + ", ".join(changed) + ": cold compile expected on the next start"


def slug(model: str) -> str:
    """A short readable directory name for a model id or path: Qwen/Qwen3-8B -> qwen3-8b."""
    name = model.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")[:48] or "model"


def directory(plan: Plan, root: Path, key: str) -> Path:
    """`<root>/vllm/<model-slug>-<key12>`: VLLM_CACHE_ROOT for this plan."""
    return Path(root) / "vllm" / f"{slug(plan.model)}-{key[:12]}"


def jit_directory(root: Path, device: str, vllm_version: str) -> Path:
    """Kernels keyed by shape and GPU, not by the config: shared by all keys on this device.

    DeepGEMM and FlashInfer cache their JIT kernels by problem shape and architecture, so a
    change of max_model_len must not pay DeepGEMM's ~5 minutes again.
    """
    return Path(root) / "vllm" / f"jit-{slug(device)}-vllm{vllm_version}"


def choose_loader(plan: Plan, installed: frozenset[str] | set[str], device: str) -> tuple[str, str]:
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
