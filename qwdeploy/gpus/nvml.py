"""The only module that talks to NVML (nvidia-ml-py). Everything else takes plain readings.

`inventory()` reads every GPU the driver knows (NVML numbering, not CUDA's: hardware.py maps
one to the other under CUDA_DEVICE_ORDER / CUDA_VISIBLE_DEVICES) and returns frozen dataclasses.
Optional facts (power, temperature, MIG, links) are None where NVML answers "not supported";
only NVMLError is caught, so a bug here still shows a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qwdeploy.errors import ExitCode, QwdeployError

PLAN_FOR_NAMED = "to plan without local GPUs name them: qwdeploy plan MODEL --gpu H100 --num-gpus 1"
NVLINK_MAX_LINKS = 18  # NVML_NVLINK_MAX_LINKS in nvml.h (H100 SXM uses all 18)

# nvmlDeviceGetTopologyCommonAncestor levels, named as `nvidia-smi topo -m` names them.
TOPOLOGY_NAMES = {0: "BOARD", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU."""

    pid: int
    used_bytes: int | None  # None where NVML cannot tell (no permission, some containers)
    name: str | None = None  # /proc/<pid>/comm; None when the pid is in another namespace


@dataclass(frozen=True)
class MigDevice:
    """One MIG instance (GPU instance + compute instance) of a GPU in MIG mode."""

    uuid: str  # MIG-...: what CUDA_VISIBLE_DEVICES takes
    name: str
    gpu_instance_id: int | None
    compute_instance_id: int | None
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int


@dataclass(frozen=True)
class GpuReading:
    """One GPU as NVML reports it (index is NVML's, i.e. nvidia-smi's)."""

    index: int
    name: str
    uuid: str
    memory_total_bytes: int  # nvmlDeviceGetMemoryInfo total (what nvidia-smi shows)
    memory_used_bytes: int  # v2 "used": allocations, without the driver-reserved part
    memory_free_bytes: int
    memory_reserved_bytes: int | None  # v2 "reserved" (driver/firmware); None before driver R510
    compute_capability: tuple[int, int]
    pci_bus_id: str = ""
    mig_enabled: bool | None = None  # None: the GPU has no MIG
    mig_devices: tuple[MigDevice, ...] = ()
    processes: tuple[GpuProcess, ...] = ()
    nvlinks_active: int | None = None  # None: no NVLink on this GPU
    power_watts: float | None = None
    temperature_c: int | None = None


@dataclass(frozen=True)
class Link:
    """How two GPUs (NVML indices a < b) reach each other."""

    a: int
    b: int
    topology: str | None  # PCIe/host path: BOARD, PIX, PXB, PHB, NODE, SYS (nvidia-smi topo -m)
    nvlink: bool  # NVML's P2P status over NVLink is OK
    p2p_read: bool | None  # P2P reads allowed at all (any path); None: not answered

    @property
    def kind(self) -> str:
        return "NVLINK" if self.nvlink else (self.topology or "unknown")


@dataclass(frozen=True)
class Inventory:
    """Everything `qwdeploy gpus` shows, as NVML reports it."""

    driver_version: str
    cuda_driver_version: int | None  # 12080 means CUDA 12.8 (what the driver supports)
    nvml_version: str | None
    gpus: tuple[GpuReading, ...]
    links: tuple[Link, ...] = ()

    @property
    def cuda_driver_version_text(self) -> str | None:
        v = self.cuda_driver_version
        return None if v is None else f"{v // 1000}.{v % 1000 // 10}"


def inventory(pynvml=None, process_name: Callable[[int], str | None] | None = None) -> Inventory:
    """Read every GPU NVML sees, or raise a QwdeployError that says what to do.

    `pynvml` and `process_name` are there for tests (a recorded NVML session replayed).
    """
    nv = _init(pynvml)
    names = process_name or _proc_comm
    try:
        count = nv.nvmlDeviceGetCount()
        if count == 0:
            raise QwdeployError("NVML works but sees no GPU", hint=PLAN_FOR_NAMED, exit_code=ExitCode.NO_GPUS)
        handles = [_required(nv, "nvmlDeviceGetHandleByIndex", i) for i in range(count)]
        gpus = tuple(_read(nv, i, h, names) for i, h in enumerate(handles))
        return Inventory(
            driver_version=_text(_required(nv, "nvmlSystemGetDriverVersion")),
            cuda_driver_version=_cuda_driver_version(nv),
            nvml_version=_optional_text(nv, "nvmlSystemGetNVMLVersion"),
            gpus=gpus,
            links=_links(nv, handles),
        )
    finally:
        nv.nvmlShutdown()


def probe(pynvml=None) -> list[GpuReading]:
    """The GPUs alone (NVML order)."""
    return list(inventory(pynvml).gpus)


# ---- NVML calls --------------------------------------------------------------------------------


def _import_pynvml():
    import pynvml

    return pynvml


def _init(pynvml=None):
    if pynvml is None:
        try:
            pynvml = _import_pynvml()
        except ImportError:
            raise QwdeployError(
                "nvidia-ml-py (pynvml) is not installed",
                hint="pip install nvidia-ml-py; " + PLAN_FOR_NAMED,
                exit_code=ExitCode.NVML_MISSING,
            ) from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise _init_error(pynvml, e) from None
    return pynvml


def _init_error(nv, e) -> QwdeployError:
    code = getattr(e, "value", None)
    if code == nv.NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return QwdeployError(
            "the NVIDIA driver library and the loaded kernel module have different versions "
            "(driver updated without reboot?)",
            hint="reboot, or reload the nvidia kernel modules; " + PLAN_FOR_NAMED,
            exit_code=ExitCode.NVML_DRIVER_MISMATCH,
        )
    if code == nv.NVML_ERROR_LIBRARY_NOT_FOUND:
        return QwdeployError(
            "no NVIDIA driver library (libnvidia-ml.so.1): no driver here, or a container started without GPU access",
            hint="install the NVIDIA driver or start the container with --gpus all; " + PLAN_FOR_NAMED,
            exit_code=ExitCode.NVML_MISSING,
        )
    if code == nv.NVML_ERROR_DRIVER_NOT_LOADED:
        return QwdeployError(
            "the NVIDIA kernel driver is not loaded",
            hint="load it (modprobe nvidia) or check `nvidia-smi`; " + PLAN_FOR_NAMED,
            exit_code=ExitCode.NVML_MISSING,
        )
    if code == nv.NVML_ERROR_NO_PERMISSION:
        return QwdeployError(
            "no permission to open the NVIDIA devices (/dev/nvidia*)",
            hint="run as a user in the video group, or pass the devices into the container; " + PLAN_FOR_NAMED,
            exit_code=ExitCode.NVML_MISSING,
        )
    return QwdeployError(
        f"NVML could not start: {e}", hint="check `nvidia-smi`; " + PLAN_FOR_NAMED, exit_code=ExitCode.NVML_MISSING
    )


def _required(nv, name: str, *args, **kwargs):
    try:
        return getattr(nv, name)(*args, **kwargs)
    except nv.NVMLError as e:
        where = f" for GPU {args[0]}" if args and isinstance(args[0], int) else ""
        raise QwdeployError(
            f"NVML failed in {name}{where}: {e}", hint="check the GPU with `nvidia-smi`; " + PLAN_FOR_NAMED
        ) from None


def _optional(nv, name: str, *args, **kwargs):
    """The answer, or None where NVML says the GPU or driver cannot tell (NotSupported, ...)."""
    fn = getattr(nv, name, None)
    if fn is None:  # older nvidia-ml-py
        return None
    try:
        return fn(*args, **kwargs)
    except nv.NVMLError:
        return None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional_text(nv, name: str, *args) -> str | None:
    value = _optional(nv, name, *args)
    return None if value is None else _text(value)


def _cuda_driver_version(nv) -> int | None:
    v = _optional(nv, "nvmlSystemGetCudaDriverVersion_v2")
    if v is None:
        v = _optional(nv, "nvmlSystemGetCudaDriverVersion")
    return None if v is None else int(v)


def _int_const(value) -> int:
    # nvidia-ml-py defines `NVML_P2P_CAPS_INDEX_READ = 0,` (a one-element tuple).
    return int(value[0]) if isinstance(value, tuple) else int(value)


def _read(nv, index: int, handle, names: Callable[[int], str | None]) -> GpuReading:
    mem = _required(nv, "nvmlDeviceGetMemoryInfo", handle)
    total, used, free, reserved = int(mem.total), int(mem.used), int(mem.free), None
    version = getattr(nv, "nvmlMemory_v2", None)
    mem2 = _optional(nv, "nvmlDeviceGetMemoryInfo", handle, version=version) if version else None
    if mem2 is not None:
        used, free, reserved = int(mem2.used), int(mem2.free), int(mem2.reserved)
    major, minor = _required(nv, "nvmlDeviceGetCudaComputeCapability", handle)
    pci = _optional(nv, "nvmlDeviceGetPciInfo", handle)
    mig_mode = _optional(nv, "nvmlDeviceGetMigMode", handle)
    mig_enabled = None if mig_mode is None else bool(mig_mode[0] == nv.NVML_DEVICE_MIG_ENABLE)
    power_mw = _optional(nv, "nvmlDeviceGetPowerUsage", handle)
    return GpuReading(
        index=index,
        name=_text(_required(nv, "nvmlDeviceGetName", handle)),
        uuid=_text(_required(nv, "nvmlDeviceGetUUID", handle)),
        memory_total_bytes=total,
        memory_used_bytes=used,
        memory_free_bytes=free,
        memory_reserved_bytes=reserved,
        compute_capability=(int(major), int(minor)),
        pci_bus_id=_text(pci.busId) if pci is not None else "",
        mig_enabled=mig_enabled,
        mig_devices=_mig_devices(nv, handle) if mig_enabled else (),
        processes=_processes(nv, handle, names),
        nvlinks_active=_nvlinks_active(nv, handle),
        power_watts=None if power_mw is None else int(power_mw) / 1000,
        temperature_c=_optional(nv, "nvmlDeviceGetTemperature", handle, nv.NVML_TEMPERATURE_GPU),
    )


def _processes(nv, handle, names) -> tuple[GpuProcess, ...]:
    by_pid: dict[int, int | None] = {}
    for call in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        for p in _optional(nv, call, handle) or ():
            used = getattr(p, "usedGpuMemory", None)
            used = None if used is None else int(used)
            pid = int(p.pid)
            # a process that is both compute and graphics appears in both lists
            by_pid[pid] = max(by_pid[pid] or 0, used or 0) if pid in by_pid else used
    return tuple(GpuProcess(pid=pid, used_bytes=used, name=names(pid)) for pid, used in sorted(by_pid.items()))


def _proc_comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _mig_devices(nv, handle) -> tuple[MigDevice, ...]:
    out = []
    for k in range(int(_optional(nv, "nvmlDeviceGetMaxMigDeviceCount", handle) or 0)):
        mig = _optional(nv, "nvmlDeviceGetMigDeviceHandleByIndex", handle, k)
        if mig is None:  # NotFound: no instance in this slot
            continue
        mem = _required(nv, "nvmlDeviceGetMemoryInfo", mig)
        out.append(
            MigDevice(
                uuid=_text(_required(nv, "nvmlDeviceGetUUID", mig)),
                name=_optional_text(nv, "nvmlDeviceGetName", mig) or "MIG device",
                gpu_instance_id=_optional(nv, "nvmlDeviceGetGpuInstanceId", mig),
                compute_instance_id=_optional(nv, "nvmlDeviceGetComputeInstanceId", mig),
                memory_total_bytes=int(mem.total),
                memory_used_bytes=int(mem.used),
                memory_free_bytes=int(mem.free),
            )
        )
    return tuple(out)


def _nvlinks_active(nv, handle) -> int | None:
    active = 0
    for link in range(NVLINK_MAX_LINKS):
        state = _optional(nv, "nvmlDeviceGetNvLinkState", handle, link)
        if state is None:  # NotSupported / InvalidArgument past the GPU's last link
            break
        active += int(state == nv.NVML_FEATURE_ENABLED)
    else:
        return active
    return active if link > 0 else None


def _links(nv, handles) -> tuple[Link, ...]:
    nvlink_cap = _int_const(nv.NVML_P2P_CAPS_INDEX_NVLINK)
    read_cap = _int_const(nv.NVML_P2P_CAPS_INDEX_READ)
    ok = nv.NVML_P2P_STATUS_OK
    out = []
    for a in range(len(handles)):
        for b in range(a + 1, len(handles)):
            ha, hb = handles[a], handles[b]
            level = _optional(nv, "nvmlDeviceGetTopologyCommonAncestor", ha, hb)
            nvlink = _optional(nv, "nvmlDeviceGetP2PStatus", ha, hb, nvlink_cap)
            read = _optional(nv, "nvmlDeviceGetP2PStatus", ha, hb, read_cap)
            topology = None if level is None else TOPOLOGY_NAMES.get(int(level), str(level))
            out.append(
                Link(a=a, b=b, topology=topology, nvlink=nvlink == ok, p2p_read=None if read is None else read == ok)
            )
    return tuple(out)
