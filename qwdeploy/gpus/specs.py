"""Specs of GPU models (data/gpus.json) and the `Gpu` record the planner sizes against. Pure.

A GPU is named (`named("H100", 2)`: capacity planning) or probed (qwdeploy.gpus.local turns an
NVML reading into the same `Gpu`); either way the planner sees plain data.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache

from qwdeploy.errors import ExitCode, UnknownGpuError
from qwdeploy.shipped import data_file
from qwdeploy.units import GiB, MiB


@dataclass(frozen=True)
class GpuSpec:
    """Datasheet facts of a GPU model, plus the memory total CUDA reports for it."""

    name: str
    aliases: tuple[str, ...]
    cuda_total_bytes: int  # cudaMemGetInfo total: what vLLM multiplies by gpu_memory_utilization
    nvml_total_mib: int  # what nvidia-smi / NVML report as total
    total_source: str  # "measured", "estimated" (see data/gpus.json "_reserved_note") or "given" (--gpu-memory)
    memory_bandwidth_gbps: float  # GB/s, datasheet
    bf16_tflops: float  # dense, datasheet
    fp8_tflops: float  # dense, datasheet; 0 where the GPU has no fp8 tensor cores
    compute_capability: tuple[int, int]
    # nvidia.com/gpu.product values (GPU feature discovery) of the products this spec covers
    product_labels: tuple[str, ...] = ()

    @property
    def fp8_native(self) -> bool:
        """w8a8 FP8 GEMMs and fp8 KV need compute capability >= 8.9 (Ada, Hopper, Blackwell)."""
        return self.compute_capability >= (8, 9)


@dataclass(frozen=True)
class Gpu:
    """One GPU the plan may use: its spec and how much memory is free before vLLM starts."""

    spec: GpuSpec
    total_bytes: int  # CUDA's total for this GPU
    free_bytes: int  # free before vLLM starts (named GPUs: assumed idle)
    index: int | None = None  # CUDA index under the current CUDA_VISIBLE_DEVICES
    uuid: str | None = None
    other_processes_bytes: int = 0  # memory held by other processes
    pci_bus_id: str | None = None
    # how this GPU reaches each other local GPU: (peer uuid, "NVLINK" | "PIX" | "PXB" | "PHB" |
    # "NODE" | "SYS" | "BOARD"), from NVML's P2P and topology queries; empty for named GPUs
    links: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name


@lru_cache(maxsize=1)
def specs() -> tuple[GpuSpec, ...]:
    data = json.loads(data_file("gpus.json").read_text())
    reserved = data["driver_reserved_mib"]
    out = []
    for g in data["gpus"]:
        measured = g.get("cuda_total_bytes")
        out.append(
            GpuSpec(
                name=g["name"],
                aliases=tuple(g.get("aliases", ())),
                cuda_total_bytes=measured or (g["nvml_total_mib"] - reserved) * MiB,
                nvml_total_mib=g["nvml_total_mib"],
                total_source="measured" if measured else "estimated",
                memory_bandwidth_gbps=g["memory_bandwidth_gbps"],
                bf16_tflops=g["bf16_tflops"],
                fp8_tflops=g.get("fp8_tflops", 0.0),
                compute_capability=tuple(g["compute_capability"]),
                product_labels=tuple(g.get("product_labels", ())),
            )
        )
    return tuple(out)


def _key(name: str) -> str:
    name = name.lower().replace("nvidia", "").replace("geforce", "")
    return re.sub(r"[^a-z0-9]", "", name)


def spec(name: str) -> GpuSpec:
    """Find a GPU spec by name, forgiving spelling only: case, spaces, hyphens, 'NVIDIA' and
    'GeForce' ('h100', 'H100-80GB', 'NVIDIA H100 80GB HBM3'). Never another product: a name
    that is not one of the known names or aliases is an error naming the closest ones."""
    wanted = _key(name)
    table = {_key(a): s for s in specs() for a in (s.name, *s.aliases)}
    if wanted in table:
        return table[wanted]
    extended = {s.name: s for k, s in table.items() if wanted and k.startswith(wanted)}
    if len(extended) > 1:
        raise UnknownGpuError(f"GPU name {name!r} is ambiguous: {', '.join(extended)}", hint="name one of them exactly")
    close = difflib.get_close_matches(wanted, list(table), n=6, cutoff=0.5)
    closest = list(dict.fromkeys([*extended, *(table[k].name for k in close)]))[:3]
    known = f"closest known GPUs: {', '.join(closest)}; " if closest else ""
    hint = known + "plan without --gpu for this machine's own GPUs"
    raise UnknownGpuError(f"unknown GPU {name!r}", hint=hint)


# More GPUs than any one machine holds (8 on an HGX board, 16 on the largest); a bound that keeps
# a typo such as --num-gpus 10000000 from building ten million GPU records.
MAX_GPUS_PER_NODE = 64


def named(name: str, count: int) -> list[Gpu]:
    """`count` idle GPUs of a named kind (capacity planning: nothing is probed)."""
    _check_count(count)
    s = spec(name)
    return [Gpu(spec=s, total_bytes=s.cuda_total_bytes, free_bytes=s.cuda_total_bytes, index=i) for i in range(count)]


def _check_count(count: int) -> None:
    if count < 1:
        raise UnknownGpuError(f"--num-gpus must be at least 1, not {count}")
    if count > MAX_GPUS_PER_NODE:
        raise UnknownGpuError(
            f"{count} GPUs in one node (--num-gpus / --num-gpus-per-node): at most {MAX_GPUS_PER_NODE}",
            hint="for more GPUs, plan several nodes: --nodes N --num-gpus-per-node G",
            exit_code=ExitCode.USAGE,
        )


def driver_reserved_bytes() -> int:
    data = json.loads(data_file("gpus.json").read_text())
    return int(data["driver_reserved_mib"]) * MiB


def unlisted(total_bytes: int, compute_capability: tuple[int, int], count: int) -> list[Gpu]:
    """`count` idle GPUs that data/gpus.json does not list, from the CUDA total and compute capability
    the user gives (--gpu-memory, --compute-capability). Bandwidth and TFLOP/s are unknown (0)."""
    _check_count(count)
    size = f"{total_bytes / GiB:.2f}".rstrip("0").rstrip(".")
    major, minor = compute_capability
    s = GpuSpec(
        name=f"GPU-{size}GiB-cc{major}.{minor}",
        aliases=(),
        cuda_total_bytes=total_bytes,
        nvml_total_mib=total_bytes // MiB,
        total_source="given",
        memory_bandwidth_gbps=0.0,
        bf16_tflops=0.0,
        fp8_tflops=0.0,
        compute_capability=compute_capability,
    )
    return [Gpu(spec=s, total_bytes=total_bytes, free_bytes=total_bytes, index=i) for i in range(count)]
