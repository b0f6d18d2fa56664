"""What a plan says about a hub checkpoint: where its facts came from, what its headers hold,
and how its format runs on the GPU. Pure."""

from __future__ import annotations

from qwdeploy.gpus.specs import Gpu
from qwdeploy.planning import quant
from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.weights import layout_of, shard
from qwdeploy.units import GiB

KERNELS = {
    "machete": "Machete",
    "marlin": "Marlin",
    "allspark": "AllSpark",
    "moe-marlin": "fused-MoE Marlin",
    "fp8": "native FP8 GEMMs",
    "fp8-marlin": "FP8 Marlin, weight-only with 16-bit scales (no FP8 tensor cores used)",
    "w8a8": "CUTLASS int8 GEMMs",
    "bnb": "bitsandbytes",
}


def checkpoint_notes(variant: Variant, gpu: Gpu, tp: int, weights_bytes: int) -> list[str]:
    """Notes for a checkpoint read from the hub (none for the shipped ones)."""
    origin, layout = variant.origin, variant.layout
    if origin is None or layout is None:
        return []
    where = "qwdeploy's cache (offline)" if origin.cached else f"{origin.source} ({origin.endpoint})"
    notes = [
        f"{variant.repo_id} at {origin.revision[:12]}: facts read from {where}: {', '.join(origin.files)}.",
        f"Its safetensors headers list {layout.tensors:,} tensors, {_gib(layout.checkpoint_bytes)} in the "
        f"checkpoint; vLLM holds {_gib(weights_bytes)} of weights per GPU at TP {tp}{_kernel(variant, gpu, tp)}.",
    ]
    if layout.ignored:
        notes.append(
            f"{len(layout.ignored)} tensor(s) have no place in vLLM's Qwen3 model and are not counted "
            f"(e.g. {layout.ignored[0]})."
        )
    q = variant.spec.quantization
    if q is not None and q.vllm_flag:
        notes.append(f"The quant config is in {q.config_file}: vLLM reads it with --quantization {q.vllm_flag}.")
    if q is not None and q.method == "bitsandbytes":
        notes.append(
            "bitsandbytes checkpoints need `pip install 'bitsandbytes>=0.48.1'` beside vLLM, which loads "
            "them with --load-format bitsandbytes and without tensor parallelism."
        )
    return notes


def _kernel(variant: Variant, gpu: Gpu, tp: int) -> str:
    """The kernel of the layer's largest quantized linear on this GPU."""
    q, s = variant.spec.quantization, variant.spec
    quantized = [x for x in layout_of(variant).layers[0].linears if x.quantized]
    if q is None or not quantized:
        return ""
    big = max(quantized, key=lambda x: x.n * x.k * x.count)
    n, k, k_full = shard(big, s, tp)
    cc = gpu.spec.compute_capability
    name = quant.kernel(q, cc, n, k, k_full, moe=big.role.startswith("experts"))
    return f" ({q.label} through {KERNELS[name]} on {gpu.name}, compute capability {cc[0]}.{cc[1]})"


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"
