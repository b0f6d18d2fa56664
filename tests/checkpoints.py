"""Qwen3-shaped checkpoints in the formats people publish, generated for the loopback hub.

`repo(config, fmt)` gives the files of a repo: config.json (with the format's quantization_config,
or a quantize_config.json beside it), generation_config.json, an index and safetensors shards
whose tensor names, dtypes and shapes are those of the format (AutoAWQ, AutoGPTQ, llm-compressor,
bitsandbytes, Qwen's FP8). Shards are written in the safetensors layout (8-byte header length,
JSON header, data); `data=False` keeps only the header and declares the full size, standing for
a real-sized checkpoint that is never downloaded.
"""

from __future__ import annotations

import json
import math

from hubserver import RepoFile

# A Qwen3 config at toy size whose shapes every kernel takes (K % 128, N % 128).
TINY = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "torch_dtype": "bfloat16",
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 128,
    "vocab_size": 1024,
    "tie_word_embeddings": False,
    "max_position_embeddings": 4096,
    "rope_theta": 1000000,
    "rms_norm_eps": 1e-06,
    "hidden_act": "silu",
    "attention_bias": False,
}
TINY_MOE = {
    **TINY,
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 128,
}

QUANT_CONFIGS = {
    "fp8": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]},
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
    "gptq-int4": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True},
    "gptq-int8": {"quant_method": "gptq", "bits": 8, "group_size": 128, "desc_act": False, "sym": True},
    "ct-fp8-dynamic": {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False},
                "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True},
            }
        },
        "ignore": ["lm_head"],
    },
    "ct-w4a16": {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128, "symmetric": True},
            }
        },
        "ignore": ["lm_head"],
    },
    "bnb-nf4": {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_quant_storage": "uint8",
    },
}
QUANT_STATE = json.dumps({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16"}).encode()


def linear(name: str, n: int, k: int, fmt: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """One linear module's tensors in a checkpoint of format `fmt` (N out, K in)."""
    g = 128
    if fmt == "fp8":
        return {f"{name}.weight": ("F8_E4M3", (n, k)), f"{name}.weight_scale_inv": ("BF16", (-(-n // g), -(-k // g)))}
    if fmt == "awq":  # AutoAWQ: packed along N
        return {
            f"{name}.qweight": ("I32", (k, n // 8)),
            f"{name}.qzeros": ("I32", (k // g, n // 8)),
            f"{name}.scales": ("F16", (k // g, n)),
        }
    if fmt.startswith("gptq"):  # AutoGPTQ: packed along K
        per = 32 // int(fmt[-1])
        return {
            f"{name}.qweight": ("I32", (k // per, n)),
            f"{name}.qzeros": ("I32", (k // g, n // per)),
            f"{name}.scales": ("F16", (k // g, n)),
            f"{name}.g_idx": ("I32", (k,)),
        }
    if fmt == "ct-fp8-dynamic":
        return {f"{name}.weight": ("F8_E4M3", (n, k)), f"{name}.weight_scale": ("BF16", (n, 1))}
    if fmt == "ct-w4a16":
        return {
            f"{name}.weight_packed": ("I32", (n, k // 8)),
            f"{name}.weight_scale": ("BF16", (n, k // g)),
            f"{name}.weight_shape": ("I64", (2,)),
        }
    if fmt == "bnb-nf4":  # double quant: uint8 absmax, fp32 nested statistics
        blocks = n * k // 64
        return {
            f"{name}.weight": ("U8", (n * k // 2, 1)),
            f"{name}.weight.absmax": ("U8", (blocks,)),
            f"{name}.weight.nested_absmax": ("F32", (-(-blocks // 256),)),
            f"{name}.weight.nested_quant_map": ("F32", (256,)),
            f"{name}.weight.quant_map": ("F32", (16,)),
            f"{name}.weight.quant_state.bitsandbytes__nf4": ("U8", (len(QUANT_STATE),)),
        }
    return {f"{name}.weight": ("BF16" if fmt == "bf16" else "F16", (n, k))}


def tensors(c: dict, fmt: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor of a Qwen3 (or Qwen3-MoE) checkpoint; embeddings, norms, lm_head and the
    router stay 16-bit."""
    h, hd, inter = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    plain = "F16" if fmt in ("awq", "gptq-int4", "gptq-int8") else "BF16"
    out = {"model.embed_tokens.weight": (plain, (c["vocab_size"], h))}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for proj, n, k in (("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q)):
            out.update(linear(p + "self_attn." + proj, n, k, fmt))
        mlps = [("mlp.", inter)]
        if c.get("num_experts"):
            mlps = [(f"mlp.experts.{e}.", c["moe_intermediate_size"]) for e in range(c["num_experts"])]
            out[p + "mlp.gate.weight"] = (plain, (c["num_experts"], h))
        for prefix, mi in mlps:
            for proj, n, k in (("gate_proj", mi, h), ("up_proj", mi, h), ("down_proj", h, mi)):
                out.update(linear(p + prefix + proj, n, k, fmt))
        for norm, n in (
            ("input_layernorm", h),
            ("post_attention_layernorm", h),
            ("self_attn.q_norm", hd),
            ("self_attn.k_norm", hd),
        ):
            out[p + norm + ".weight"] = (plain, (n,))
    out["model.norm.weight"] = (plain, (h,))
    if not c["tie_word_embeddings"]:
        out["lm_head.weight"] = (plain, (c["vocab_size"], h))
    return out


BYTES = {"F8_E4M3": 1, "U8": 1, "F16": 2, "BF16": 2, "I32": 4, "F32": 4, "I64": 8}


def nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * BYTES[dtype]


def safetensors(entries: dict[str, tuple[str, tuple[int, ...]]], data: bool = True) -> tuple[bytes, int]:
    """A shard in the safetensors layout (zeros for data), and its full size. `data=False`:
    the 8-byte length and the header only."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape) in entries.items():
        size = nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    head = len(raw).to_bytes(8, "little") + raw
    return (head + bytes(offset) if data else head), len(head) + offset


def repo(
    config: dict, fmt: str, *, shards: int = 2, data: bool = True, quant_file: str | None = None
) -> dict[str, RepoFile]:
    """The files of a hub repo holding `config` in format `fmt`. `quant_file`: the quant config
    goes into that file instead of config.json (old AutoGPTQ / AutoAWQ layouts)."""
    config = dict(config)
    qc = QUANT_CONFIGS.get(fmt)
    files: dict[str, RepoFile] = {}
    if qc and quant_file:
        files[quant_file] = RepoFile(
            quant_file, json.dumps({k: v for k, v in qc.items() if k != "quant_method"}).encode(), lfs=False
        )
    elif qc:
        config.setdefault("quantization_config", qc)
    if fmt in ("awq", "gptq-int4", "gptq-int8"):
        config["torch_dtype"] = "float16"
    entries = list(tensors(config, fmt).items())
    per = -(-len(entries) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = dict(entries[i * per : (i + 1) * per])
        blob, size = safetensors(part, data)
        files[name] = RepoFile(name, blob, lfs=True, declared_size=None if data else size)
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": sum(nbytes(d, s) for _, (d, s) in entries)}, "weight_map": weight_map}
    generation = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "eos_token_id": [2]}
    for path, content in (
        ("config.json", config),
        ("generation_config.json", generation),
        ("model.safetensors.index.json", index),
    ):
        files[path] = RepoFile(path, json.dumps(content, indent=2).encode(), lfs=False)
    files["tokenizer_config.json"] = RepoFile(
        "tokenizer_config.json", b'{"tokenizer_class": "Qwen2Tokenizer"}', lfs=False
    )
    return files


def checkpoint_bytes(config: dict, fmt: str) -> int:
    """The sum of a checkpoint's tensors, as its headers list them."""
    return sum(nbytes(d, s) for d, s in tensors(config, fmt).values())
