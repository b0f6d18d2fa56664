"""Quantized checkpoints as vLLM 0.26 runs them: what the config says, the kernel a GPU gets, the
bytes one linear layer then holds. Pure.

Read from vLLM 0.26.0's source (paths under vllm/):
  * which config: config.json's `quantization_config` (model_arch_config_convertor.py); a
    separate quantize_config.json / quant_config.json only with `--quantization gptq|awq`
    (model_loader/weight_utils.py get_quant_config, `get_config_filenames`).
  * kernels (model_executor/kernels/linear/__init__.py choose_mp_linear_kernel, and the FP8
    `choose_scaled_mm_linear_kernel`): int4/int8 weight-only linears go through Machete on
    compute capability 9.0 exactly (AWQ, GPTQ int4 and int8, compressed-tensors WNA16; shard
    K % 64, N % 128, groups -1/64/128), AllSpark on 8.x for channelwise symmetric int8, else
    Marlin (7.5 and up). FP8 runs natively from 8.9 and as weight-only FP8 Marlin on 7.5-8.8.
  * bytes after `process_weights_after_loading` (the worked tables: /work/scratch/cc_quant):
    Marlin keeps no GPTQ zero points and packs AWQ's (bits/8 a group element); Machete keeps
    GPTQ's int32 qzeros and g_idx as loaded and turns AWQ zeros into 16-bit `-scale·zp`;
    FP8 Marlin re-lays block scales as 16-bit group scales (2·N·K/128 bytes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from qwdeploy.errors import UnknownModelError

# Where checkpoints keep their quant config when config.json has none: vLLM reads these with
# --quantization gptq (quantize_config.json) or awq (both): get_config_filenames.
CONFIG_FILES = ("quantize_config.json", "quant_config.json")
FUSED_PARTS = {"qkv": 3, "gate_up": 2, "experts_w13": 2}
MARLIN_GROUPS = (-1, 32, 64, 128)
MACHETE_GROUPS = (-1, 64, 128)
# compute capability each scheme needs in vLLM 0.26 (the quant config's get_min_capability and
# Marlin's 7.5 floor: utils/marlin_utils.py query_marlin_supported_quant_types)
MIN_CAPABILITY = {"fp8": (7, 5), "wna16": (7, 5), "w8a8": (7, 5), "bnb": (7, 0)}
FORMATS = "FP8 (block or per-tensor/channel), AWQ, GPTQ (symmetric), compressed-tensors W4A16/W8A16/W8A8, bitsandbytes"


@dataclass(frozen=True)
class Quantization:
    """A checkpoint's quantization config, reduced to what decides kernels and bytes."""

    method: str  # vLLM's quant_method: fp8 | awq | gptq | compressed-tensors | bitsandbytes
    bits: int  # weight bits: 8 for FP8, 4 or 8 for the integer formats
    scheme: str  # fp8-block | fp8-tensor | fp8-channel | wna16 | w8a8 | bnb
    group_size: int = 128  # integer groups (-1: one per output channel, 0: one per tensor); FP8 block edge
    desc_act: bool = False  # GPTQ act-order: g_idx stays on the GPU
    keeps_16bit: tuple[str, ...] = ()  # module name patterns left unquantized
    symmetric: bool = True  # False: zero points (AWQ; compressed-tensors asymmetric)
    static_input: bool = False  # static activation scales (one fp32 per layer)
    weight_only: bool = False  # FP8 weights with 16-bit activations (compressed-tensors W8A16)
    config_file: str | None = None  # the quant config lives in this file, not config.json

    @property
    def family(self) -> str:
        """fp8 | wna16 | w8a8 | bnb: what picks the kernel."""
        return "fp8" if self.scheme.startswith("fp8") else self.scheme

    @property
    def weight_dtype(self) -> str:
        return "fp8" if self.family == "fp8" else f"int{self.bits}"

    @property
    def label(self) -> str:
        """How the plan names the format (the Variant's `weights`)."""
        if self.method in ("fp8", "awq"):
            return self.method
        if self.method == "gptq":
            return f"gptq-int{self.bits}"
        if self.method == "bitsandbytes":
            return f"bnb-{'nf4' if self.bits == 4 else 'int8'}"
        return "ct-fp8" if self.family == "fp8" else f"ct-{'w8a8' if self.scheme == 'w8a8' else f'w{self.bits}a16'}"

    @property
    def vllm_flag(self) -> str | None:
        """`--quantization` vLLM needs: only when the config is in a file of its own."""
        return self.method if self.config_file else None


# ---- reading the config -------------------------------------------------------------------------


def refuse(source: str, what: str, hint: str = f"vLLM 0.26 runs: {FORMATS}") -> UnknownModelError:
    return UnknownModelError(f"{source}: {what}", hint=hint)


def parse(qc: Mapping[str, Any] | None, source: str, config_file: str | None = None) -> Quantization | None:
    """The quantization of a checkpoint from its quant config (None: unquantized)."""
    if not qc:
        return None
    method = str(qc.get("quant_method") or _method_of_file(qc, config_file)).lower()
    method = method.replace("compressed_tensors", "compressed-tensors")
    parsers = {
        "fp8": _fp8,
        "awq": _awq,
        "awq_marlin": _awq,
        "auto_awq": _awq,
        "gptq": _gptq,
        "gptq_marlin": _gptq,
        "auto_gptq": _gptq,
        "compressed-tensors": _compressed_tensors,
        "bitsandbytes": _bitsandbytes,
    }
    if method == "gguf":
        raise refuse(source, "GGUF is not in vLLM 0.26 (it moved to the vllm-gguf-plugin package)")
    if method not in parsers:
        raise refuse(source, f"quant_method {method!r} is not one qwdeploy plans")
    return replace(parsers[method](qc, source), config_file=config_file)


def _method_of_file(qc: Mapping[str, Any], config_file: str | None) -> str:
    """AutoAWQ's quant_config.json and old AutoGPTQ quantize_config.json carry no quant_method."""
    if config_file and ({"w_bit", "q_group_size", "zero_point"} & set(qc) or config_file == "quant_config.json"):
        return "awq"
    return "gptq" if config_file else ""


def _fp8(qc: Mapping[str, Any], source: str) -> Quantization:
    keeps = tuple(qc.get("modules_to_not_convert") or qc.get("ignored_layers") or ())
    block = qc.get("weight_block_size")
    static = str(qc.get("activation_scheme", "dynamic")) == "static"
    if block:
        return Quantization("fp8", 8, "fp8-block", int(block[1]), keeps_16bit=keeps)
    return Quantization("fp8", 8, "fp8-tensor", 0, keeps_16bit=keeps, static_input=static)


def _awq(qc: Mapping[str, Any], source: str) -> Quantization:
    bits = int(qc.get("w_bit") or qc.get("bits") or 4)
    group = int(qc.get("q_group_size") or qc.get("group_size") or 128)
    if bits != 4:
        raise refuse(source, f"{bits}-bit AWQ: vLLM 0.26 runs 4-bit AWQ only", "use a 4-bit AWQ or an 8-bit GPTQ build")
    if not qc.get("zero_point", True):
        raise refuse(source, "AWQ without zero points has no Marlin kernel in vLLM 0.26", "use a GPTQ build")
    keeps = tuple(qc.get("modules_to_not_convert") or ())
    return Quantization("awq", 4, "wna16", group, keeps_16bit=keeps, symmetric=False)


def _gptq(qc: Mapping[str, Any], source: str) -> Quantization:
    bits, group = int(qc.get("bits", 4)), int(qc.get("group_size", 128))
    if bits not in (4, 8) or not qc.get("sym", True):
        raise refuse(
            source,
            f"GPTQ bits={bits}, sym={qc.get('sym', True)}: vLLM 0.26 runs symmetric 4- and 8-bit GPTQ only",
            "use a symmetric GPTQ build (sym: true), or an AWQ one",
        )
    desc_act = bool(qc.get("desc_act", False)) and group != -1  # one group per channel: no order
    return Quantization("gptq", bits, "wna16", group, desc_act=desc_act)


def _compressed_tensors(qc: Mapping[str, Any], source: str) -> Quantization:
    groups = list((qc.get("config_groups") or {}).values())
    schemes = {_ct_scheme(g, source) for g in groups}
    if len(schemes) != 1:
        raise refuse(source, f"compressed-tensors with {len(schemes)} different schemes is not planned")
    return replace(schemes.pop(), keeps_16bit=tuple(qc.get("ignore") or ()))


def _ct_scheme(group: Mapping[str, Any], source: str) -> Quantization:
    w, a = group.get("weights") or {}, group.get("input_activations") or {}
    bits, kind, strategy = int(w.get("num_bits", 0)), w.get("type"), str(w.get("strategy", "tensor"))
    sym = bool(w.get("symmetric", True))
    static = bool(a) and not a.get("dynamic", False)
    ct = "compressed-tensors"
    if kind == "float" and bits == 8 and strategy in ("tensor", "channel", "block"):
        block = w.get("block_structure") or [128, 128]
        size = int(block[1]) if strategy == "block" else -1 if strategy == "channel" else 0
        return Quantization(ct, 8, f"fp8-{strategy}", size, static_input=static, weight_only=not a)
    if kind == "int" and bits in (4, 8) and not a and strategy in ("group", "channel"):
        size = int(w.get("group_size") or -1) if strategy == "group" else -1
        return Quantization(ct, bits, "wna16", size, str(w.get("actorder") or "") == "group", symmetric=sym)
    if kind == "int" and bits == 8 and a and int(a.get("num_bits", 0)) == 8 and strategy in ("tensor", "channel"):
        size = -1 if strategy == "channel" else 0
        return Quantization(ct, 8, "w8a8", size, symmetric=bool(a.get("symmetric", True)), static_input=static)
    raise refuse(source, f"compressed-tensors weights {kind} {bits}-bit {strategy} (activations {a}) are not planned")


def _bitsandbytes(qc: Mapping[str, Any], source: str) -> Quantization:
    keeps = tuple(qc.get("llm_int8_skip_modules") or ())
    if qc.get("load_in_8bit"):
        return Quantization("bitsandbytes", 8, "bnb", -1, keeps_16bit=keeps)
    storage = str(qc.get("bnb_4bit_quant_storage", "uint8"))
    if storage != "uint8":
        raise refuse(source, f"bnb_4bit_quant_storage {storage}: vLLM 0.26 loads uint8 storage only")
    return Quantization("bitsandbytes", 4, "bnb", 64, keeps_16bit=keeps)


# ---- the GPU: can it run it, which kernel, how many bytes ----------------------------------------


def gpu_problem(q: Quantization | None, cc: tuple[int, int]) -> str | None:
    """Why vLLM 0.26 cannot run this format on a GPU of compute capability `cc`, or None."""
    if q is None:
        return None
    need = MIN_CAPABILITY[q.family]
    if tuple(cc) < need:
        return f"{q.label} needs compute capability {need[0]}.{need[1]} in vLLM 0.26 (this GPU: {cc[0]}.{cc[1]})"
    if q.family == "wna16" and q.group_size not in MARLIN_GROUPS:
        return f"group size {q.group_size}: vLLM's Marlin kernels take {MARLIN_GROUPS}"
    return None


def runs_on(cc: tuple[int, int]) -> list[str]:
    """The weight formats vLLM 0.26 runs on compute capability `cc` (for refusal hints)."""
    names = {"fp8": "FP8", "wna16": "AWQ/GPTQ int4-int8", "w8a8": "W8A8 int8", "bnb": "bitsandbytes"}
    return ["bf16/fp16"] + [names[f] for f, need in MIN_CAPABILITY.items() if tuple(cc) >= need]


def kernel(q: Quantization, cc: tuple[int, int], n: int, k: int, k_full: int, moe: bool = False) -> str:
    """The kernel vLLM 0.26 picks for one linear shard (N out, K in) or fused-MoE expert."""
    if q.family == "fp8":
        return "fp8" if tuple(cc) >= (8, 9) and not q.weight_only else "fp8-marlin"
    if q.family != "wna16":
        return q.family
    if moe:
        return "moe-marlin"
    if tuple(cc) == (9, 0) and _machete_fits(q, n, k, k_full):
        return "machete"
    if (8, 0) <= tuple(cc) < (9, 0) and q.bits == 8 and q.group_size == -1 and q.symmetric and not q.desc_act:
        return "allspark"
    return "marlin"


def _machete_fits(q: Quantization, n: int, k: int, k_full: int) -> bool:
    """machete.py can_implement: groups -1/64/128, K % 64, N % 128, act-order only unsplit."""
    return q.group_size in MACHETE_GROUPS and k % 64 == 0 and n % 128 == 0 and not (q.desc_act and k != k_full)


def linear_bytes(q: Quantization, kernel_name: str, n: int, k: int, k_full: int, parts: int = 1) -> int:
    """Bytes one quantized linear shard (N out, K in; K of the whole layer: k_full) holds."""
    return sum(linear_tensors(q, kernel_name, n, k, k_full, parts))


def linear_tensors(q: Quantization, kernel_name: str, n: int, k: int, k_full: int, parts: int = 1) -> tuple[int, ...]:
    """The tensors (bytes each) one quantized linear shard holds: the weight first, then its scales,
    zero points and indices (each its own allocation, which is how torch's allocator counts them)."""
    if kernel_name in ("fp8", "fp8-marlin"):
        return _fp8_tensors(q, kernel_name, n, k)
    if kernel_name == "w8a8":  # CutlassInt8ScaledMM: int8 weight; fused per-tensor scales -> per channel
        scales = 4 * n if parts > 1 or q.group_size == -1 else 4
        return n * k, scales, 4 * n if not q.symmetric else 0, 4 if q.static_input else 0
    if kernel_name == "bnb":  # packed weight + fp32 absmax a block (double quant undone) + code
        if q.bits == 8:
            return n * k, 4 * n
        return n * k // 2, math.ceil(n * k / q.group_size) * 4, 64
    return _int_tensors(q, kernel_name, n, k, k_full)


def _fp8_tensors(q: Quantization, kernel_name: str, n: int, k: int) -> tuple[int, ...]:
    static = 4 if q.static_input else 0
    if kernel_name == "fp8-marlin":  # weight-only: 1 B a weight (tile-padded) + 16-bit scales
        pn, pk = marlin_padded_nk(n, k, q.group_size)
        if q.scheme == "fp8-block":
            return pn * pk, pk // q.group_size * pn * 2
        return pn * pk, 2 * pn
    if q.scheme == "fp8-block":  # fp32 weight_scale_inv per block
        b = q.group_size
        return n * k, math.ceil(n / b) * math.ceil(k / b) * 4
    if q.scheme == "fp8-channel":
        return n * k, 4 * n, static
    return n * k, 4, static  # per tensor: fused shards requantized to the largest scale


def _int_tensors(q: Quantization, kernel_name: str, n: int, k: int, k_full: int) -> tuple[int, ...]:
    """Integer weight-only formats (AWQ, GPTQ, compressed-tensors WNA16)."""
    g = q.group_size
    ct = 16 if q.method == "compressed-tensors" else 0  # weight_shape int64[2], kept
    if kernel_name == "allspark":  # N32K16 re-layout, 16-bit scales; GPTQ's qzeros and g_idx stay
        n32 = math.ceil(n / 32) * 32
        leftovers = (n * q.bits // 8, 4 * k) if q.method == "gptq" else ()
        return n32 * k, 2 * n32, *leftovers, ct
    if kernel_name == "machete":
        groups = k // g if g > 0 else 1
        packed, scales = n * k * q.bits // 8, groups * n * 2
        act_order = 4 * k if q.desc_act else 0
        if q.method == "gptq":  # int32 qzeros and g_idx as loaded; act-order keeps a permutation
            return packed, scales, groups * n * q.bits // 8, 4 * k, act_order
        zeros = 0 if q.symmetric else groups * n * 2  # -scale·zp in the activation dtype
        return packed, scales, zeros, act_order, ct
    if kernel_name == "moe-marlin":  # fused experts; GPTQ keeps 16-bit qzeros (AutoGPTQMoEMethod)
        groups = k // g if g > 0 else 1
        zeros = groups * n * q.bits // 16 if q.method == "gptq" else 0 if q.symmetric else groups * n * q.bits // 8
        return n * k * q.bits // 8, groups * n * 2, zeros
    if q.desc_act:  # Marlin with act-order: strict shapes, sorted g_idx + indices, full scales
        return n * k * q.bits // 8, (k_full // g) * n * 2, 8 * k, ct
    pn, pk = marlin_padded_nk(n, k, g)
    groups = pk // g if g > 0 else 1
    zeros = 0 if q.symmetric else groups * pn * q.bits // 8
    return pn * pk * q.bits // 8, groups * pn * 2, zeros, ct


def marlin_padded_nk(n: int, k: int, group_size: int = -1) -> tuple[int, int]:
    """utils/marlin_utils.py marlin_padded_nk: the cheaper of the (64, 128) and (128, 64) tiles."""
    group = group_size if group_size > 0 else 1
    candidates = (
        (_round_up(n, 64), _round_up(k, math.lcm(128, group))),
        (_round_up(n, 128), _round_up(k, math.lcm(64, group))),
    )
    return min(candidates, key=lambda nk: (nk[0] * nk[1], nk[0] + nk[1]))


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m
