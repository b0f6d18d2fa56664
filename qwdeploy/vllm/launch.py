"""Everything before vLLM starts (I/O): host memory, the weights on disk, the compile cache, the command.

`prepare` turns a plan into a ready-to-run `Launch` (qwdeploy.vllm.command); the supervisor
(qwdeploy.vllm.supervisor) runs it.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from qwdeploy.errors import QwdeployError
from qwdeploy.paths import unwritable
from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.plan import Plan
from qwdeploy.vllm import cache
from qwdeploy.vllm.cache import CacheState
from qwdeploy.vllm.command import DEFAULT_SERVER, OFFLINE_ENV, Launch, ServerOptions, Weights, build, served_name
from qwdeploy.vllm.cpu import CpuKv, HostMemory, check_cpu_kv, cpu_kv_space, parse_meminfo

DRY_RUN_WEIGHTS = (
    "downloaded into the Hugging Face cache first (not by a dry run); "
    "from ModelScope, --model names the downloaded directory instead"
)


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


def ensure_weights(variant: Variant, *, fetch: bool = True, progress: Any = None) -> Weights:
    """Local directories are used in place; hub models are downloaded (verified, resumable) into
    the hub cache unless `fetch` is False, and vLLM then runs offline."""
    if variant.local_path is not None:
        return Weights(str(Path(variant.local_path).resolve()), {}, "local directory")
    if not fetch:
        return Weights(variant.repo_id, {}, "--no-download: vLLM finds (or fetches) the weights")
    path, protocol = _download(variant, progress)
    if protocol == "modelscope":
        # ModelScope's cache is not where huggingface_hub looks: give vLLM the directory.
        env = {**OFFLINE_ENV, "VLLM_USE_MODELSCOPE": "true"}
        return Weights(str(path), env, f"from ModelScope, in {path}")
    return Weights(variant.repo_id, dict(OFFLINE_ENV), f"in the Hugging Face cache ({path})")


def _download(variant: Variant, progress: Any) -> tuple[Path, str]:
    """The one call into the hub download: (directory of the files, source protocol). A hub
    checkpoint comes from the source and revision its plan was read from."""
    from qwdeploy.hub import download  # the hub clients load only when weights are fetched

    o = variant.origin
    where = download.Where(source=o.source, endpoint=o.endpoint, revision=o.revision) if o else download.Where()
    result = download.download(variant.repo_id, where=where, progress=progress)
    return Path(result.path), result.manifest.source.protocol


def prepare(
    plan: Plan,
    device: str,
    options: ServerOptions = DEFAULT_SERVER,
    fetch: bool = True,
    dry_run: bool = False,
    progress: Any = None,
) -> tuple[Launch, CpuKv | None, CacheState]:
    """Everything before the start: the CPU KV space (refused early when it cannot hold one
    sequence), the compile cache, the weights (not fetched for a dry run), the command. A dry
    run leaves the disk as it was."""
    kv = None
    if device == "cpu":
        kv = cpu_kv_space(plan, read_host_memory(), extra=options.extra)
        check_cpu_kv(kv, plan.max_model_len)
    # The cache first: a cache directory that cannot be written stops serve before the download.
    state = cache.prepare(plan, device="cpu" if device == "cpu" else plan.gpu.name, create=not dry_run)
    if dry_run and fetch and plan.variant.local_path is None:
        weights = Weights(plan.variant.repo_id, dict(OFFLINE_ENV), DRY_RUN_WEIGHTS)  # as it runs once downloaded
    else:
        weights = ensure_weights(plan.variant, fetch=fetch, progress=progress)
    options = replace(options, kv=kv, cache_env=dict(state.env), load_format=state.load_format)
    return build(plan, device, weights, options), kv, state


def default_log_path(plan: Plan, cache_root: Path) -> Path:
    slug = re.sub(r"[^a-z0-9.]+", "-", served_name(plan.variant).lower()).strip("-") or "model"
    return cache_root / "logs" / f"serve-{slug}-{time.strftime('%Y%m%d-%H%M%S')}.log"


def log_path(plan: Plan, log_file: str | None, cache_root: Path) -> Path:
    """Where vLLM's output goes (--log-file, else under the cache root), refused before anything
    starts when it cannot be written there."""
    path = Path(os.path.expanduser(log_file)) if log_file else default_log_path(plan, cache_root)
    problem = f"{path} is a directory" if path.is_dir() else unwritable(path.parent)
    if problem is not None:
        where = "--log-file" if log_file else "QWDEPLOY_CACHE_DIR (or --cache-dir)"
        raise QwdeployError(f"cannot write vLLM's log to {path}: {problem}", hint=f"point {where} somewhere writable")
    return path
