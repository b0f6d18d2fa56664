"""Qwen3 model facts (config.json) and their official variants, shipped with the package.

MODEL on the command line is one of:
  * a repo id of a known variant (``Qwen/Qwen3-14B-AWQ``),
  * a base repo id plus a weight dtype (``Qwen/Qwen3-14B`` + ``int4`` -> ``Qwen/Qwen3-14B-AWQ``),
  * a local directory holding a Qwen3-architecture config.json (fine-tunes, own quantizations).
Nothing here touches the network.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from qwdeploy.errors import ExitCode, UnknownModelError
from qwdeploy.planning import quant
from qwdeploy.planning.config_read import HINT, ConfigReader
from qwdeploy.planning.layout import Layout
from qwdeploy.planning.quant import Quantization
from qwdeploy.shipped import data_file

QWEN3_ARCHITECTURES = ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM")

# Weight formats a user can ask for (--dtype).
WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "int4", "int8")


@dataclass(frozen=True)
class Origin:
    """Where a hub checkpoint's facts came from (config, quant config, safetensors headers)."""

    source: str  # hf | hf-mirror | modelscope
    endpoint: str
    revision: str  # the commit when the hub names one, else the branch or tag
    files: tuple[str, ...]  # the files read (config.json, ..., the shards' headers)
    cached: bool = False  # read from the local caches, not the network


@dataclass(frozen=True)
class ModelSpec:
    """The config.json facts a memory model needs. Field names follow config.json."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    torch_dtype: str = "bfloat16"
    num_experts: int = 0  # 0 = dense
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    rope_scaling: dict[str, Any] | None = None
    quantization: Quantization | None = None
    architecture: str = "Qwen3ForCausalLM"
    rope_theta: float | None = None

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def context_length(self) -> int:
        """vLLM's derived max_model_len: max_position_embeddings, or, with YaRN in config.json,
        original_max_position_embeddings × factor (config/model.py _get_and_verify_max_len)."""
        rs = self.rope_scaling or {}
        if (rs.get("rope_type") or rs.get("type")) == "yarn" and rs.get("original_max_position_embeddings"):
            return int(rs["original_max_position_embeddings"] * rs.get("factor", 1.0))
        return self.max_position_embeddings


@dataclass(frozen=True)
class Variant:
    """One checkpoint: where to get it and what it is."""

    repo_id: str  # Hugging Face and ModelScope use the same id for Qwen's repos
    base: str  # the bf16 base repo of the family
    weights: str  # bf16 | fp16 | the quantized format's label (fp8, awq, gptq-int4, ct-w4a16 ...)
    spec: ModelSpec
    local_path: Path | None = None  # set for a local directory
    config_provenance: str = "verbatim"  # "derived": base config + quant config; "local"; "remote"
    aliases: tuple[str, ...] = field(default=())
    layout: Layout | None = None  # the parameters from the safetensors headers (hub checkpoints)
    origin: Origin | None = None  # where a hub checkpoint's facts came from

    @property
    def weight_dtype(self) -> str:
        """bf16 | fp16 | fp8 | int4 | int8."""
        q = self.spec.quantization
        return q.weight_dtype if q else self.weights

    @property
    def from_catalog(self) -> bool:
        """One of Qwen's checkpoints shipped with qwdeploy (its family has other formats)."""
        return self.config_provenance in ("verbatim", "derived")

    @property
    def hf_repo_id(self) -> str:
        return self.repo_id

    @property
    def modelscope_repo_id(self) -> str:
        return self.repo_id

    @property
    def name(self) -> str:
        return str(self.local_path) if self.local_path else self.repo_id

    @property
    def is_2507(self) -> bool:
        return "2507" in self.base

    @property
    def thinking(self) -> str:
        """'hybrid' (Qwen3 2504: thinking by default, switchable), 'always' or 'never' (2507)."""
        if "Thinking-2507" in self.base:
            return "always"
        if "Instruct-2507" in self.base:
            return "never"
        return "hybrid"


def spec_from_config(config: Any, source: str) -> ModelSpec:
    """Read the memory-relevant facts of a Qwen3 config.json, refusing impossible values."""
    if not isinstance(config, dict):
        raise UnknownModelError(f"{source}: config.json is not a JSON object ({type(config).__name__})", hint=HINT)
    architectures = config.get("architectures") or []
    arch = (
        next((a for a in architectures if a in QWEN3_ARCHITECTURES), None) if isinstance(architectures, list) else None
    )
    if arch is None:
        raise UnknownModelError(
            f"{source}: architectures {architectures} is not a Qwen3 architecture",
            hint=f"qwdeploy plans {', '.join(QWEN3_ARCHITECTURES)} models",
        )
    read = ConfigReader(config, source)
    hidden, heads = read.positive("hidden_size"), read.positive("num_attention_heads")
    experts = read.count("num_experts")
    spec = ModelSpec(
        hidden_size=hidden,
        intermediate_size=read.count("intermediate_size") if experts else read.positive("intermediate_size"),
        num_hidden_layers=read.positive("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=read.positive("num_key_value_heads", heads),
        head_dim=read.positive("head_dim", hidden // heads),
        vocab_size=read.positive("vocab_size"),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        max_position_embeddings=read.positive("max_position_embeddings", 40960),
        torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
        num_experts=experts,
        num_experts_per_tok=read.positive("num_experts_per_tok") if experts else 0,
        moe_intermediate_size=read.positive("moe_intermediate_size") if experts else 0,
        rope_scaling=read.rope_scaling(),
        quantization=quant.parse(read.mapping("quantization_config") or read.mapping("compression_config"), source),
        architecture=arch,
        rope_theta=read.number("rope_theta"),
    )
    _consistent(spec, source)
    return spec


def _consistent(s: ModelSpec, source: str) -> None:
    if s.num_attention_heads % s.num_key_value_heads:
        raise UnknownModelError(
            f"{source}: num_key_value_heads ({s.num_key_value_heads}) does not divide "
            f"num_attention_heads ({s.num_attention_heads})",
            hint=HINT,
        )
    if s.num_experts_per_tok > s.num_experts:
        raise UnknownModelError(
            f"{source}: num_experts_per_tok ({s.num_experts_per_tok}) exceeds num_experts ({s.num_experts})",
            hint=HINT,
        )


def weights_label(spec: ModelSpec) -> str:
    """bf16 | fp16 | the quantized format's label (fp8, awq, gptq-int4, ct-w4a16, bnb-nf4 ...)."""
    if spec.quantization is not None:
        return spec.quantization.label
    return "fp16" if spec.torch_dtype in ("float16", "fp16") else "bf16"


@lru_cache(maxsize=1)
def variants() -> tuple[Variant, ...]:
    """Every shipped variant, from data/catalog.json and data/configs/."""
    entries = json.loads(data_file("catalog.json").read_text())["variants"]
    out = []
    for e in entries:
        file = e["repo_id"].replace("/", "--") + ".json"
        config = json.loads(data_file("configs", file).read_text())
        out.append(
            Variant(
                repo_id=e["repo_id"],
                base=e["base"],
                weights=e["weights"],
                spec=spec_from_config(config, file),
                config_provenance=e["config_provenance"],
            )
        )
    return tuple(out)


def config_json(variant: Variant) -> dict[str, Any]:
    """The full config.json of a variant (shipped copy, or the local directory's)."""
    if variant.local_path is not None:
        return _read_json(variant.local_path / "config.json")
    shipped = data_file("configs", variant.repo_id.replace("/", "--") + ".json")
    config: dict[str, Any] = json.loads(shipped.read_text())
    return config


def family(base: str) -> list[Variant]:
    return [v for v in variants() if v.base == base]


def _by_id() -> dict[str, Variant]:
    return {v.repo_id.lower(): v for v in variants()}


def normalise(model: str) -> str:
    """MODEL as a repo id: hub URL prefixes dropped, a bare Qwen3 name given Qwen's org."""
    model = model.strip().rstrip("/")
    for prefix in ("https://huggingface.co/", "https://modelscope.cn/models/", "hf://"):
        if model.startswith(prefix):
            model = model[len(prefix) :]
    if "/" not in model and model.lower().startswith("qwen3"):
        model = "Qwen/" + model
    return model


REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_repo_id(model: str) -> bool:
    """Does MODEL name a hub repo (org/name), not a local directory?"""
    return _on_disk(model) is None and REPO_ID.fullmatch(normalise(model)) is not None


def knows(model: str) -> bool:
    """Is MODEL a local directory or one of the shipped ids (resolved without the network)?"""
    return (path := _on_disk(model)) is not None and path.is_dir() or normalise(model).lower() in _by_id()


def suggest(model: str) -> str:
    """A hint for an id qwdeploy does not ship: the closest shipped ids."""
    return _closest(normalise(model).lower(), _by_id())


def get(model: str, dtype: str | None = None) -> Variant:
    """Resolve MODEL (+ optional weight dtype) to a variant, or raise UnknownModelError."""
    path = _on_disk(model)
    if path is not None and path.is_dir():
        return _local(path, dtype)
    known = _by_id()
    key = normalise(model).lower()
    variant = known.get(key)
    if variant is None:
        raise UnknownModelError(f"unknown model {model!r}", hint=_closest(key, known))
    if dtype is None:
        return variant
    if variant.repo_id != variant.base and dtype.lower() in WEIGHT_DTYPES and dtype.lower() != variant.weight_dtype:
        raise UnknownModelError(
            f"{variant.repo_id} holds {variant.weight_dtype} weights, not {dtype}",
            hint=f"drop --dtype, or name the base id ({variant.base} --dtype {dtype})",
            exit_code=ExitCode.USAGE,
        )
    return pick_dtype(variant, dtype)


def pick_dtype(variant: Variant, dtype: str) -> Variant:
    """The variant of the same family whose weights are `dtype` (bf16/fp16 use the base repo)."""
    dtype = dtype.lower()
    if dtype not in WEIGHT_DTYPES:
        hint = f"one of {', '.join(WEIGHT_DTYPES)}"
        raise UnknownModelError(f"unknown --dtype {dtype!r}", hint=hint, exit_code=ExitCode.USAGE)
    if not variant.from_catalog:
        if dtype != variant.weight_dtype and not {dtype, variant.weight_dtype} <= {"bf16", "fp16"}:
            raise UnknownModelError(
                f"{variant.name} holds {variant.weight_dtype} weights, not {dtype}",
                hint="quantize the checkpoint first, or drop --dtype",
                exit_code=ExitCode.USAGE,
            )
        return _as_fp16(variant) if dtype == "fp16" else variant
    if dtype in ("bf16", "fp16"):
        base = _by_id()[variant.base.lower()]
        return _as_fp16(base) if dtype == "fp16" else base
    for v in family(variant.base):
        if v.weight_dtype == dtype:
            return v
    offered = sorted({v.weight_dtype for v in family(variant.base)} | {"fp16"})
    raise UnknownModelError(
        f"Qwen publishes no {dtype} checkpoint of {variant.base}", hint=f"available: {', '.join(offered)}"
    )


def _as_fp16(v: Variant) -> Variant:
    return replace(v, weights="fp16")


def _local(path: Path, dtype: str | None) -> Variant:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UnknownModelError(f"{path} has no config.json", hint="point MODEL at a model directory")
    spec = spec_from_config(_read_json(config_file), str(config_file))
    apart = next((path / f for f in quant.CONFIG_FILES if (path / f).is_file()), None)
    if spec.quantization is None and apart is not None:  # old AutoGPTQ / AutoAWQ layouts
        spec = replace(spec, quantization=quant.parse(_read_json(apart), str(apart), apart.name))
    variant = Variant(
        repo_id=str(path),
        base=str(path),
        weights=weights_label(spec),
        spec=spec,
        local_path=path,
        config_provenance="local",
    )
    return pick_dtype(variant, dtype) if dtype else variant


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_bytes())
    except json.JSONDecodeError as e:
        raise UnknownModelError(f"{file}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UnknownModelError(f"cannot read {file}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(data, dict):
        raise UnknownModelError(f"{file}: not a JSON object ({type(data).__name__})", hint="point MODEL at a model")
    return data


def _on_disk(model: str) -> Path | None:
    """MODEL as a path that exists here, else None (also for a name no filesystem could hold)."""
    try:
        path = Path(model).expanduser()
        return path if path.exists() else None
    except (OSError, ValueError, RuntimeError):  # a name too long, a NUL, ~nobody
        return None


def _closest(key: str, known: dict[str, Variant]) -> str:
    names = {k: v.repo_id for k, v in known.items()}
    close = difflib.get_close_matches(key, list(names), n=3, cutoff=0.6)
    if not close:
        close = [k for k in names if key.split("/")[-1] in k][:3]
    if close:
        return "did you mean " + ", ".join(names[c] for c in close) + "?"
    return "run `qwdeploy models` for the known ids, or pass a local directory with a config.json"


def in_order_of(base: Variant, weights: tuple[str, ...]) -> list[Variant]:
    """A base checkpoint's family in a profile's order of weight formats (bf16, fp8, int4 ...)."""
    ordered = []
    for want in weights:
        if want == "bf16":
            ordered.append(base)
        elif want == "fp16":
            ordered.append(pick_dtype(base, "fp16"))
        else:
            ordered += [v for v in family(base.base) if v.weight_dtype == want]
    return ordered or [base]
