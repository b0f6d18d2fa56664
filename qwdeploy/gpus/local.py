"""The local GPUs as CUDA (and so vLLM) will see them: NVML readings under CUDA_VISIBLE_DEVICES.

`local_view` is pure (an inventory and an environment in, `LocalGpus` out); `local()` probes NVML
through qwdeploy.gpus.nvml, the only module that imports pynvml.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from qwdeploy.errors import ExitCode, QwdeployError, UnknownGpuError
from qwdeploy.gpus import nvml
from qwdeploy.gpus.nvml import PLAN_FOR_NAMED
from qwdeploy.gpus.specs import Gpu, GpuSpec, driver_reserved_bytes, spec
from qwdeploy.units import MiB

# ---- local GPUs: NVML readings -> what CUDA (and so vLLM) will see ------------------------------
#
# NVML (and nvidia-smi) number GPUs by PCI bus id. CUDA numbers them by CUDA_DEVICE_ORDER:
# PCI_BUS_ID gives nvidia-smi's order; the default, FASTEST_FIRST, puts the "fastest" GPU first by
# an undocumented heuristic (identical GPUs keep PCI order). CUDA_VISIBLE_DEVICES then picks and
# reorders: integer entries index CUDA's order, GPU-<uuid> entries (any unique prefix) and
# MIG-<uuid> entries name devices; parsing stops at the first invalid entry, a repeated device
# leaves no device at all, and a process enumerates at most one MIG instance.

ORDER_PCI = "PCI_BUS_ID"
ORDER_FASTEST = "FASTEST_FIRST"


@dataclass(frozen=True)
class Visible:
    """A device CUDA will enumerate: a whole GPU, or one MIG instance of it."""

    cuda_index: int
    reading: nvml.GpuReading
    mig: nvml.MigDevice | None = None

    @property
    def usable(self) -> bool:
        """A GPU in MIG mode runs CUDA only through a MIG instance named in CUDA_VISIBLE_DEVICES."""
        return self.mig is not None or not self.reading.mig_enabled


@dataclass(frozen=True)
class LocalGpus:
    """The local inventory under this process's CUDA_VISIBLE_DEVICES / CUDA_DEVICE_ORDER."""

    inventory: nvml.Inventory
    visible: tuple[Visible, ...]
    cuda_visible_devices: str | None
    cuda_device_order: str
    notes: tuple[str, ...] = ()

    def gpus(self) -> list[Gpu]:
        """The devices a plan may use, CUDA-numbered, with their links to each other."""
        usable = [v for v in self.visible if v.usable]
        if not usable:
            raise QwdeployError(
                "every visible GPU is in MIG mode and CUDA_VISIBLE_DEVICES names no MIG instance",
                hint="set CUDA_VISIBLE_DEVICES to one MIG-... uuid from `qwdeploy gpus`; " + PLAN_FOR_NAMED,
                exit_code=ExitCode.NO_GPUS,
            )
        uuids = {r.index: r.uuid for r in self.inventory.gpus}
        links: dict[int, list[tuple[str, str]]] = {}
        for link in self.inventory.links:
            links.setdefault(link.a, []).append((uuids[link.b], link.kind))
            links.setdefault(link.b, []).append((uuids[link.a], link.kind))
        return [
            from_reading(
                v.reading,
                cuda_index=v.cuda_index,
                mig=v.mig,
                links=tuple(links.get(v.reading.index, ()) if v.mig is None else ()),
            )
            for v in usable
        ]

    def to_json(self) -> dict[str, Any]:
        inv = self.inventory
        cuda = {v.reading.index: v for v in self.visible}
        by_nvml = {r.index: r for r in inv.gpus}
        links = [
            {
                "a": cuda[k.a].cuda_index if k.a in cuda else None,
                "b": cuda[k.b].cuda_index if k.b in cuda else None,
                "a_uuid": by_nvml[k.a].uuid,
                "b_uuid": by_nvml[k.b].uuid,
                "kind": k.kind,
                "nvlink": k.nvlink,
                "topology": k.topology,
                "p2p_read": k.p2p_read,
            }
            for k in inv.links
        ]
        return {
            "driver_version": inv.driver_version,
            "cuda_driver_version": inv.cuda_driver_version_text,
            "nvml_version": inv.nvml_version,
            "cuda_visible_devices": self.cuda_visible_devices,
            "cuda_device_order": self.cuda_device_order,
            "gpus": [_gpu_json(r, cuda.get(r.index)) for r in inv.gpus],
            "links": links,
            "notes": list(self.notes),
        }


def _gpu_json(r: nvml.GpuReading, v: Visible | None) -> dict[str, Any]:
    """One GPU of `qwdeploy gpus --json` (v: how CUDA sees it, None when hidden)."""
    return {
        "index": v.cuda_index if v else None,
        "nvml_index": r.index,
        "name": r.name,
        "uuid": r.uuid,
        "pci_bus_id": r.pci_bus_id,
        "compute_capability": f"{r.compute_capability[0]}.{r.compute_capability[1]}",
        "memory_total_bytes": r.memory_total_bytes,
        "memory_reserved_bytes": r.memory_reserved_bytes,
        "memory_used_bytes": r.memory_used_bytes,
        "memory_free_bytes": r.memory_free_bytes,
        "cuda_total_bytes": cuda_total_bytes(r),
        "mig_mode": None if r.mig_enabled is None else ("enabled" if r.mig_enabled else "disabled"),
        "mig_devices": [
            {
                "uuid": m.uuid,
                "name": m.name,
                "gpu_instance_id": m.gpu_instance_id,
                "compute_instance_id": m.compute_instance_id,
                "memory_total_bytes": m.memory_total_bytes,
                "memory_used_bytes": m.memory_used_bytes,
                "memory_free_bytes": m.memory_free_bytes,
                "visible": bool(v and v.mig is not None and v.mig.uuid == m.uuid),
            }
            for m in r.mig_devices
        ],
        "processes": [{"pid": p.pid, "name": p.name, "used_bytes": p.used_bytes} for p in r.processes],
        "other_processes_bytes": other_processes_bytes(r),
        "nvlinks_active": r.nvlinks_active,
        "power_watts": r.power_watts,
        "temperature_c": r.temperature_c,
    }


def local(env: Mapping[str, str] | None = None) -> LocalGpus:
    """Probe NVML and apply CUDA_DEVICE_ORDER / CUDA_VISIBLE_DEVICES from `env` (os.environ)."""
    import os

    return local_view(nvml.inventory(), os.environ if env is None else env)


def local_gpus() -> list[Gpu]:
    """The local GPUs through NVML (raises a QwdeployError with a hint when there are none)."""
    return local().gpus()


def local_view(inventory: nvml.Inventory, env: Mapping[str, str]) -> LocalGpus:
    """Pure: an NVML inventory as CUDA will number it under `env`."""
    order = (env.get("CUDA_DEVICE_ORDER") or ORDER_FASTEST).strip().upper()
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    ordered, certain = cuda_order(inventory.gpus, order)
    notes: list[str] = []
    by_index = cvd is None or any(_digits(t.strip().lstrip("+-")) for t in cvd.split(","))
    if not certain and by_index:
        kinds = ", ".join(sorted({r.name for r in inventory.gpus}))
        notes.append(
            f"GPUs of different kinds ({kinds}) and CUDA_DEVICE_ORDER is not "
            f"PCI_BUS_ID: CUDA's FASTEST_FIRST order is a heuristic, so the CUDA indices "
            f"shown are a best guess; set CUDA_DEVICE_ORDER=PCI_BUS_ID to make them "
            f"nvidia-smi's."
        )
    visible = resolve_visible_devices(inventory.gpus, ordered, cvd, notes)
    for v in visible:
        if v.reading.mig_enabled and v.mig is None:
            notes.append(
                f"GPU {v.cuda_index} ({v.reading.uuid}) is in MIG mode: CUDA runs only on "
                f"a MIG instance; name one (MIG-...) in CUDA_VISIBLE_DEVICES to plan "
                f"on it."
            )
    return LocalGpus(
        inventory=inventory,
        visible=tuple(visible),
        cuda_visible_devices=cvd,
        cuda_device_order=order if order == ORDER_PCI else ORDER_FASTEST,
        notes=tuple(notes),
    )


def cuda_order(readings, order: str) -> tuple[list, bool]:
    """Readings in CUDA's numbering before CUDA_VISIBLE_DEVICES; and is that order certain?"""
    by_bus = sorted(readings, key=lambda r: (r.pci_bus_id.lower(), r.index))
    if order == ORDER_PCI or len({r.name for r in readings}) <= 1:
        return by_bus, True
    # FASTEST_FIRST across different GPUs: newer compute capability, then more memory, first.
    return sorted(by_bus, key=lambda r: (r.compute_capability, r.memory_total_bytes), reverse=True), False


def resolve_visible_devices(readings, ordered, cvd: str | None, notes: list[str]) -> list[Visible]:
    """CUDA_VISIBLE_DEVICES applied as CUDA applies it, except that a name of a device that does
    not exist (which CUDA silently drops, with everything after it) is an error here."""
    if cvd is None:
        return [Visible(i, r) for i, r in enumerate(ordered)]
    valid = _valid_names(ordered)
    tokens = [t.strip() for t in cvd.split(",")]
    if not cvd.strip() or _is_negative(tokens[0]):
        raise QwdeployError(
            f"CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU",
            hint=f"unset it, or name GPUs: {valid}; {PLAN_FOR_NAMED}",
            exit_code=ExitCode.NO_GPUS,
        )
    chosen: list[tuple] = []
    for pos, tok in enumerate(tokens):
        if not tok or _is_negative(tok):
            rest = ",".join(tokens[pos + 1 :])
            if rest:
                notes.append(f"CUDA_VISIBLE_DEVICES: CUDA stops at {tok!r} and ignores {rest!r}.")
            break
        item = _resolve_one(tok, readings, ordered, cvd, valid)
        if item in chosen:
            raise _bad(f"CUDA_VISIBLE_DEVICES={cvd!r} names {tok!r} twice (CUDA then sees no GPU)", valid)
        chosen.append(item)
    migs = [c for c in chosen if c[1] is not None]
    if len(migs) > 1 or (migs and len(chosen) > 1):
        notes.append(
            "CUDA enumerates a single MIG instance per process: only the first device of CUDA_VISIBLE_DEVICES is used."
        )
        chosen = chosen[:1]
    return [Visible(i, r, m) for i, (r, m) in enumerate(chosen)]


def _digits(tok: str) -> bool:
    """ASCII digits only, as CUDA reads an index ('¹' and '٣' are digits to Python, not to CUDA)."""
    return tok.isascii() and tok.isdigit()


def _is_negative(tok: str) -> bool:
    return tok.startswith("-") and _digits(tok[1:])


def _resolve_one(tok: str, readings, ordered, cvd: str, valid: str) -> tuple:
    if _digits(tok.lstrip("+")):
        n = int(tok)
        if n >= len(ordered):
            plural = "s" if len(ordered) != 1 else ""
            raise _bad(
                f"CUDA_VISIBLE_DEVICES={cvd!r} names GPU {n}, but CUDA numbers "
                f"{len(ordered)} GPU{plural} here (0..{len(ordered) - 1})",
                valid,
            )
        return ordered[n], None
    if tok.startswith("GPU-"):
        hits = [r for r in readings if r.uuid.startswith(tok)]
        if len(hits) > 1:
            raise _bad(f"CUDA_VISIBLE_DEVICES entry {tok!r} matches {len(hits)} GPUs", valid)
        if not hits:
            raise _bad(f"CUDA_VISIBLE_DEVICES names {tok}, which is no GPU on this machine", valid)
        return hits[0], None
    if tok.startswith("MIG-"):
        hits = _mig_matches(tok, readings)
        if len(hits) != 1:
            what = (
                "matches several MIG instances"
                if hits
                else (
                    "is no MIG instance on this machine"
                    if any(r.mig_devices for r in readings)
                    else "is no MIG instance (no GPU here has MIG instances)"
                )
            )
            raise _bad(f"CUDA_VISIBLE_DEVICES entry {tok!r} {what}", valid)
        return hits[0]
    raise _bad(f"CUDA_VISIBLE_DEVICES entry {tok!r} is neither a CUDA index, a GPU-<uuid> nor a MIG-<uuid>", valid)


def _mig_matches(tok: str, readings) -> list[tuple]:
    legacy = re.fullmatch(r"MIG-(GPU-[0-9a-fA-F-]+)/(\d+)/(\d+)", tok)  # drivers before R470
    out = []
    for r in readings:
        for m in r.mig_devices:
            if legacy:
                parent, gi, ci = legacy.group(1), int(legacy.group(2)), int(legacy.group(3))
                ids = (m.gpu_instance_id, m.compute_instance_id)
                if r.uuid.startswith(parent) and ids == (gi, ci):
                    out.append((r, m))
            elif m.uuid.startswith(tok):
                out.append((r, m))
    return out


def _valid_names(ordered) -> str:
    names = [f"{i} ({r.uuid})" for i, r in enumerate(ordered)]
    names += [m.uuid for r in ordered for m in r.mig_devices]
    return "; ".join(names) if names else "none"


def _bad(message: str, valid: str) -> QwdeployError:
    return QwdeployError(message, hint=f"valid here: {valid}; {PLAN_FOR_NAMED}", exit_code=ExitCode.BAD_VISIBLE_DEVICES)


# ---- one reading -> the planner's Gpu -----------------------------------------------------------


def cuda_total_bytes(reading) -> int:
    """cudaMemGetInfo's total for a GPU read through NVML: what vLLM multiplies by gmu."""
    if reading.memory_reserved_bytes is not None:
        return reading.memory_total_bytes - reading.memory_reserved_bytes
    return reading.memory_total_bytes - driver_reserved_bytes()


def other_processes_bytes(reading) -> int:
    """Memory other processes hold on the GPU (qwdeploy holds none: NVML needs no CUDA context)."""
    listed = sum(p.used_bytes or 0 for p in reading.processes)
    if reading.memory_reserved_bytes is not None:
        used = reading.memory_used_bytes
    else:
        used = max(0, reading.memory_used_bytes - driver_reserved_bytes())
    # processes in another pid namespace (containers) are not listed but their memory is used
    return max(listed, used if used > IDLE_USED_BYTES else 0)


IDLE_USED_BYTES = 64 * MiB  # what an idle GPU reports used besides the reserved part


def from_reading(reading, cuda_index: int | None = None, mig=None, links: tuple[tuple[str, str], ...] = ()) -> Gpu:
    """A probed GPU (nvml.GpuReading), or one MIG instance of it, as the planner sees it."""
    try:
        s = spec(reading.name)
    except UnknownGpuError:
        s = GpuSpec(
            name=reading.name,
            aliases=(),
            cuda_total_bytes=cuda_total_bytes(reading),
            nvml_total_mib=reading.memory_total_bytes // MiB,
            total_source="measured",
            memory_bandwidth_gbps=0.0,
            bf16_tflops=0.0,
            fp8_tflops=0.0,
            compute_capability=reading.compute_capability,
        )
    if mig is None:  # GPU feature discovery labels the node with this very name, spaces as '-'
        s = replace(s, product_labels=(reading.name.replace(" ", "-"),))
    index = reading.index if cuda_index is None else cuda_index
    if mig is not None:
        share = mig.memory_total_bytes / reading.memory_total_bytes
        s = replace(
            s,
            name=f"{s.name} {mig.name.split(' MIG ')[-1]}",
            aliases=(),
            cuda_total_bytes=mig.memory_total_bytes,
            nvml_total_mib=mig.memory_total_bytes // MiB,
            total_source="measured",
            memory_bandwidth_gbps=s.memory_bandwidth_gbps * share,
            bf16_tflops=s.bf16_tflops * share,
            fp8_tflops=s.fp8_tflops * share,
        )
        return Gpu(
            spec=s,
            total_bytes=mig.memory_total_bytes,
            free_bytes=mig.memory_free_bytes,
            index=index,
            uuid=mig.uuid,
            other_processes_bytes=mig.memory_used_bytes,
            pci_bus_id=reading.pci_bus_id or None,
        )
    return Gpu(
        spec=s,
        total_bytes=cuda_total_bytes(reading),
        free_bytes=reading.memory_free_bytes,
        index=index,
        uuid=reading.uuid,
        other_processes_bytes=other_processes_bytes(reading),
        pci_bus_id=reading.pci_bus_id or None,
        links=links,
    )
