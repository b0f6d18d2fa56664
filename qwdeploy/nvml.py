"""The only module that talks to NVML (nvidia-ml-py). Everything else takes plain readings."""

from __future__ import annotations

from dataclasses import dataclass

from qwdeploy.errors import ExitCode, QwdeployError

PLAN_FOR_NAMED = "plan for named GPUs instead: qwdeploy plan MODEL --gpu H100 --num-gpus 1"


@dataclass(frozen=True)
class GpuReading:
    """One GPU as NVML reports it."""

    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    memory_reserved_bytes: int | None
    compute_capability: tuple[int, int]


def probe() -> list[GpuReading]:
    """Read every visible GPU, or raise a QwdeployError that says what to do."""
    pynvml = _init()
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            raise QwdeployError("NVML sees no GPU", hint=PLAN_FOR_NAMED, exit_code=ExitCode.NO_GPUS)
        return [_read(pynvml, i) for i in range(count)]
    finally:
        pynvml.nvmlShutdown()


def _init():
    try:
        import pynvml
    except ImportError:
        raise QwdeployError("nvidia-ml-py is not installed", hint="pip install nvidia-ml-py; or " + PLAN_FOR_NAMED,
                            exit_code=ExitCode.NVML_MISSING) from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        code = getattr(e, "value", None)
        if code == pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH:
            raise QwdeployError("the NVIDIA driver library and kernel module versions differ",
                                hint="reboot, or reload the nvidia kernel module; or " + PLAN_FOR_NAMED,
                                exit_code=ExitCode.NVML_DRIVER_MISMATCH) from None
        if code == pynvml.NVML_ERROR_DRIVER_NOT_LOADED:
            raise QwdeployError("the NVIDIA driver is not loaded", hint=PLAN_FOR_NAMED,
                                exit_code=ExitCode.NVML_MISSING) from None
        raise QwdeployError(f"no NVIDIA driver library found (NVML: {e})", hint=PLAN_FOR_NAMED,
                            exit_code=ExitCode.NVML_MISSING) from None
    return pynvml


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read(pynvml, index: int) -> GpuReading:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        mem2 = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        reserved = int(mem2.reserved)
    except (pynvml.NVMLError, AttributeError, TypeError):
        reserved = None
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    return GpuReading(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
        memory_total_bytes=int(mem.total),
        memory_used_bytes=int(mem.used),
        memory_free_bytes=int(mem.free),
        memory_reserved_bytes=reserved,
        compute_capability=(int(major), int(minor)),
    )
