"""The model's parameters from config.json, or from the safetensors headers of a checkpoint. Pure.

vLLM's Qwen3 model (models/qwen3.py, qwen3_moe.py) fuses q/k/v into qkv_proj and gate/up into
gate_up_proj (per expert in the fused MoE), keeps the router (`mlp.gate`) and lm_head apart, and
quantizes a module only when its tensors are quantized (AutoGPTQ/AutoAWQ `maybe_update_config`
reads the header dtypes: float tensors stay 16-bit). The headers must agree with config.json:
vLLM builds the model from the config and loads the tensors into it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from qwdeploy.errors import UnknownModelError
from qwdeploy.planning import quant
from qwdeploy.planning.catalog import ModelSpec, Origin, Variant, spec_from_config, weights_label
from qwdeploy.planning.layout import FLOAT_DTYPES, Layer, Layout, Linear, Tensor
from qwdeploy.planning.quant import Quantization

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_PROJ = re.compile(
    r"(?:self_attn|mlp)\.(?:experts\.(\d+)\.)?(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|gate)\.(.+)"
)
_NORMS = (
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "self_attn.q_norm.weight",
    "self_attn.k_norm.weight",
)
_ROLE_PROJS = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
    "experts_w13": ("gate_proj", "up_proj"),
    "experts_w2": ("down_proj",),
}

_TOP = ("model.embed_tokens", "lm_head", "model.norm")
Parts = dict[str, Tensor]  # one module's tensors by suffix (weight, qweight, scales, ...)
Key = tuple[int | None, str]  # (expert or None, checkpoint projection name)


def from_config(s: ModelSpec) -> Layout:
    """The parameters config.json implies (Qwen's checkpoints: every linear quantized when the
    model is, the router and lm_head in 16 bits)."""
    h, hd, q = s.hidden_size, s.head_dim, s.quantization is not None
    attn = (
        Linear("qkv", (s.num_attention_heads + 2 * s.num_key_value_heads) * hd, h, q),
        Linear("o", h, s.num_attention_heads * hd, q),
    )
    if s.is_moe:
        mi, e = s.moe_intermediate_size, s.num_experts
        mlp: tuple[Linear, ...] = (
            Linear("experts_w13", 2 * mi, h, q, count=e),
            Linear("experts_w2", h, mi, q, count=e),
            Linear("router", e, h, quantized=False),
        )
    else:
        mlp = (Linear("gate_up", 2 * s.intermediate_size, h, q), Linear("down", h, s.intermediate_size, q))
    layer = Layer(attn + mlp, 2 * h + 2 * hd)
    lm_head = None if s.tie_word_embeddings else Linear("lm_head", s.vocab_size, h, quantized=False)
    return Layout((layer,) * s.num_hidden_layers, s.vocab_size, lm_head, h)


def from_tensors(s: ModelSpec, tensors: Iterable[Tensor], source: str) -> Layout:
    """The parameters the headers hold, checked against config.json."""
    tensors = tuple(tensors)
    layers: dict[int, dict[Key, Parts]] = defaultdict(lambda: defaultdict(dict))
    top: dict[str, Parts] = defaultdict(dict)
    norms: dict[int, int] = defaultdict(int)
    ignored = []
    for t in tensors:
        m = _LAYER.fullmatch(t.name)
        proj = _PROJ.fullmatch(m.group(2)) if m else None
        if m and proj:
            expert = int(proj.group(1)) if proj.group(1) is not None else None
            layers[int(m.group(1))][(expert, proj.group(2))][proj.group(3)] = t
        elif m and m.group(2) in _NORMS:
            norms[int(m.group(1))] += t.elements
        elif any(t.name.startswith(f"{module}.") for module in _TOP):
            module = next(module for module in _TOP if t.name.startswith(f"{module}."))
            top[module][t.name[len(module) + 1 :]] = t
        else:
            ignored.append(t.name)
    if sorted(layers) != list(range(s.num_hidden_layers)):
        raise _disagree(source, f"config.json has {s.num_hidden_layers} layers, the safetensors {len(layers)}")
    interned: dict[Layer, Layer] = {}
    built = []
    for i in range(s.num_hidden_layers):
        layer = Layer(_layer_linears(s, layers[i], i, source), norms[i])
        built.append(interned.setdefault(layer, layer))
    return Layout(
        layers=tuple(built),
        vocab_rows=_rows(s, top, "model.embed_tokens", source),
        lm_head=_lm_head(s, top, source),
        final_norm_elements=sum(t.elements for t in top["model.norm"].values()),
        checkpoint_bytes=sum(t.nbytes for t in tensors),
        tensors=len(tensors),
        ignored=tuple(ignored),
    )


def _layer_linears(s: ModelSpec, mods: Mapping[Key, Parts], i: int, source: str) -> tuple[Linear, ...]:
    where = f"{source}: model.layers.{i}"
    if not s.is_moe:
        return tuple(_fused(s, mods, role, None, where) for role in ("qkv", "o", "gate_up", "down"))
    out = [_fused(s, mods, role, None, where) for role in ("qkv", "o")]
    for role in ("experts_w13", "experts_w2"):
        experts = [_fused(s, mods, role, x, where) for x in range(s.num_experts)]
        flags = [e.quantized for e in experts]
        out += [replace(experts[0], quantized=f, count=flags.count(f)) for f in (True, False) if f in flags]
    router = mods.get((None, "gate"))
    if router is None:
        raise _disagree(f"{where}.mlp.gate", "the router is missing from the safetensors")
    out.append(
        Linear("router", s.num_experts, s.hidden_size, _quantized(s, router, "gate", False, f"{where}.mlp.gate"))
    )
    return tuple(out)


def _fused(s: ModelSpec, mods: Mapping[Key, Parts], role: str, expert: int | None, where: str) -> Linear:
    """One of vLLM's fused linears from its checkpoint modules (q/k/v, gate/up; o, down)."""
    projs = _ROLE_PROJS[role]
    flags = set()
    for p in projs:
        name = f"{where}.{_module(p, expert)}"
        parts = mods.get((expert, p))
        if parts is None:
            raise _disagree(name, "missing from the safetensors")
        flags.add(_quantized(s, parts, p, expert is not None, name))
    if len(flags) > 1:
        raise _disagree(where, f"{'/'.join(projs)} are quantized differently (vLLM fuses them)")
    n = sum(_expected(s, p, expert is not None)[0] for p in projs)
    return Linear(role, n, _expected(s, projs[0], expert is not None)[1], quantized=flags.pop())


def _module(proj: str, expert: int | None) -> str:
    if proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        return f"self_attn.{proj}"
    return f"mlp.experts.{expert}.{proj}" if expert is not None else f"mlp.{proj}"


def _expected(s: ModelSpec, proj: str, expert: bool) -> tuple[int, int]:
    """(N, K) config.json gives a checkpoint module."""
    h, hd = s.hidden_size, s.head_dim
    inter = s.moe_intermediate_size if expert else s.intermediate_size
    return {
        "q_proj": (s.num_attention_heads * hd, h),
        "k_proj": (s.num_key_value_heads * hd, h),
        "v_proj": (s.num_key_value_heads * hd, h),
        "o_proj": (h, s.num_attention_heads * hd),
        "gate_proj": (inter, h),
        "up_proj": (inter, h),
        "down_proj": (h, inter),
        "gate": (s.num_experts, h),
    }[proj]


def _quantized(s: ModelSpec, parts: Parts, proj: str, expert: bool, name: str) -> bool:
    """Whether a module's tensors are quantized, after checking their shape against the config."""
    q, want = s.quantization, _expected(s, proj, expert)
    quantized = any(t.dtype not in FLOAT_DTYPES for t in parts.values())
    if quantized and q is None:
        raise UnknownModelError(
            f"{name}: quantized tensors but no quantization config",
            hint="vLLM 0.26 reads it from config.json's quantization_config, quantize_config.json or quant_config.json",
        )
    got = _shape(parts, q) if quantized and q else _plain_shape(parts)
    if got is None or (got != want and got != want[0] * want[1]):
        raise _disagree(name, f"the safetensors hold {got}, config.json implies {want[0]}x{want[1]}")
    return quantized


def _plain_shape(parts: Parts) -> tuple[int, int] | None:
    w = parts.get("weight")
    return (w.shape[0], w.shape[1]) if w is not None and len(w.shape) == 2 else None


def _shape(parts: Parts, q: Quantization) -> tuple[int, int] | int | None:
    """(N, K) of a quantized module from its packed tensors; bitsandbytes: N·K (flat storage)."""
    per_word = 32 // q.bits
    if "qweight" in parts:  # AWQ [K, N/8] packed along N; GPTQ [K/(32/bits), N] along K
        rows, cols = parts["qweight"].shape[:2]
        return (cols * per_word, rows) if q.method == "awq" else (cols, rows * per_word)
    if "weight_packed" in parts:  # compressed-tensors pack-quantized [N, K/(32/bits)]
        rows, cols = parts["weight_packed"].shape[:2]
        return rows, cols * per_word
    w = parts.get("weight")
    if w is not None and w.dtype == "U8" and q.method == "bitsandbytes":
        return w.elements * 8 // q.bits
    return _plain_shape(parts)


def _rows(s: ModelSpec, top: Mapping[str, Parts], module: str, source: str) -> int:
    w = top.get(module, {}).get("weight")
    if w is None or w.shape != (s.vocab_size, s.hidden_size):
        got = w.shape if w is not None else "nothing"
        raise _disagree(source, f"{module} is {got}, config.json implies ({s.vocab_size}, {s.hidden_size})")
    return w.shape[0]


def _lm_head(s: ModelSpec, top: Mapping[str, Parts], source: str) -> Linear | None:
    if s.tie_word_embeddings:
        return None  # vLLM reuses embed_tokens and skips a stored lm_head
    parts = top.get("lm_head")
    if not parts:
        raise _disagree(source, "tie_word_embeddings is false but the safetensors hold no lm_head")
    quantized = any(t.dtype not in FLOAT_DTYPES for t in parts.values())
    if not quantized:
        _rows(s, top, "lm_head", source)
    return Linear("lm_head", s.vocab_size, s.hidden_size, quantized=quantized)


def _disagree(source: str, what: str) -> UnknownModelError:
    return UnknownModelError(f"{source}: {what}", hint="vLLM builds the model from config.json: the two must match")


def remote_variant(
    repo_id: str,
    config: Mapping[str, Any],
    quant_config: tuple[Mapping[str, Any], str] | None,
    tensors: tuple[Tensor, ...],
    origin: Origin,
) -> Variant:
    """A hub checkpoint as a variant: its config (+ a quant config file) and its headers' tensors."""
    spec = spec_from_config(dict(config), repo_id)
    if spec.quantization is None and quant_config is not None:
        qc, file = quant_config
        spec = replace(spec, quantization=quant.parse(qc, f"{repo_id}/{file}", file))
    layout = from_tensors(spec, tensors, repo_id)
    return Variant(
        repo_id=repo_id,
        base=repo_id,
        weights=weights_label(spec),
        spec=spec,
        config_provenance="remote",
        layout=layout,
        origin=origin,
    )
