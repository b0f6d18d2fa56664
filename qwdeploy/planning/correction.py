"""Plan vs actual: the correction `plan` draws from what vLLM really got at each `serve`. Pure.

Every successful `qwdeploy serve` records the GPU, the vLLM version, the model, the settings and
what vLLM's log says it got (qwdeploy.vllm.records). `correction` turns the records of one GPU
kind + vLLM version into offsets on the default memory model: for each term the model cannot
derive from config.json (peak activation, non-torch memory, CUDA graphs; the weights as the
allocator holds them) the measured minus what the default model gives for the record's own
settings, recomputed now (a record's stored baseline may come from an older model). Offsets are
kept per model and per tensor-parallel size (a TP 2 start says nothing exact about TP 1); the
planner takes the closest (Calibration.offsets_for). The activation offset is added to the
final peak, whichever term is the peak, separately for starts that compile and those that do not.
Records without vLLM's "Actual usage" line (CPU runs) correct nothing.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from qwdeploy.planning.calibration import CALIBRATION, Calibration, Offsets
from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.context import rope_for, rope_max_position
from qwdeploy.planning.engine import Engine
from qwdeploy.planning.memory import activation_bytes, cudagraph_bytes, non_torch_bytes
from qwdeploy.planning.plan import Plan
from qwdeploy.planning.versions import BASELINE, VllmRules, target
from qwdeploy.planning.weights import weight_bytes
from qwdeploy.units import GiB

MEASURED = ("activation_bytes", "non_torch_bytes")


def engine_of(
    settings: Mapping[str, Any], variant: Variant, compute_capability: tuple[int, int], vllm: VllmRules = BASELINE
) -> Engine:
    """The engine a record's settings describe (under the rules of the record's vLLM)."""
    mml = int(settings.get("max_model_len") or variant.spec.max_position_embeddings)
    return Engine(
        tensor_parallel_size=int(settings.get("tensor_parallel_size") or 1),
        pipeline_parallel_size=int(settings.get("pipeline_parallel_size") or 1),
        max_model_len=mml,
        max_num_batched_tokens=int(settings.get("max_num_batched_tokens") or 0),
        max_num_seqs=int(settings.get("max_num_seqs") or 0),
        enforce_eager=bool(settings.get("enforce_eager")),
        kv_cache_dtype=str(settings.get("kv_cache_dtype") or "auto"),
        max_position=rope_max_position(rope_for(variant, mml)),
        compile_cache_warm=bool(settings.get("compile_cache_warm")),
        compute_capability=compute_capability,
        vllm=vllm,
    )


def default_terms(variant: Variant, engine: Engine) -> dict[str, int]:
    """What the default memory model (no records) gives for these settings."""
    return {
        "weights_bytes": weight_bytes(variant, engine),
        "activation_bytes": activation_bytes(variant, engine),
        "non_torch_bytes": non_torch_bytes(variant, engine),
        "cudagraph_bytes": cudagraph_bytes(variant, engine),
    }


def baseline(plan: Plan, compile_cache_warm: bool = False) -> dict[str, int]:
    """The default model's terms for the plan's settings (kept in each record, for reading)."""
    engine = Engine(
        tensor_parallel_size=plan.tensor_parallel_size,
        pipeline_parallel_size=plan.pipeline_parallel_size,
        max_model_len=plan.max_model_len,
        max_num_batched_tokens=plan.max_num_batched_tokens,
        max_num_seqs=plan.max_num_seqs,
        enforce_eager=plan.enforce_eager,
        kv_cache_dtype=plan.kv_cache_dtype,
        max_position=rope_max_position(plan.rope_scaling),
        compile_cache_warm=compile_cache_warm,
        compute_capability=plan.gpu.spec.compute_capability,
        vllm=plan.vllm.rules,
    )
    return default_terms(plan.variant, engine)


def _gpu_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("nvidia", ""))


def _minor(version: str | None) -> str:
    parts = (version or "").split("+")[0].split(".")
    return ".".join(parts[:2])


def matching(records: Iterable[dict[str, Any]], gpu: str, vllm_version: str) -> list[dict[str, Any]]:
    """Records of this GPU kind and vLLM minor version that measured the overheads."""
    out = []
    for r in records:
        a = r.get("actual") or {}
        if (
            _gpu_key(str(r.get("gpu", ""))) == _gpu_key(gpu)
            and _minor(r.get("vllm_version")) == _minor(vllm_version)
            and all(isinstance(a.get(k), (int, float)) for k in MEASURED)
        ):
            out.append(r)
    return out


@dataclass(frozen=True)
class Gap:
    """One record: measured minus the default model for its settings."""

    model: str
    tp: int
    compiles: bool
    activation_per_token: float | None
    non_torch: int
    weights: int | None
    graph_ratio: float | None


def gap(
    record: Mapping[str, Any], variant: Variant, compute_capability: tuple[int, int], vllm: VllmRules = BASELINE
) -> Gap:
    a, s = record["actual"], record.get("settings") or {}
    engine = engine_of(s, variant, compute_capability, vllm)
    default = default_terms(variant, engine)
    tokens = engine.max_num_batched_tokens
    graphs = a.get("cudagraph_bytes")
    return Gap(
        model=variant.name,
        tp=engine.tensor_parallel_size,
        compiles=not engine.enforce_eager and not engine.compile_cache_warm,
        activation_per_token=(a["activation_bytes"] - default["activation_bytes"]) / tokens if tokens else None,
        non_torch=int(a["non_torch_bytes"] - default["non_torch_bytes"]),
        weights=int(a["weights_bytes"] - default["weights_bytes"]) if isinstance(a.get("weights_bytes"), int) else None,
        graph_ratio=graphs / default["cudagraph_bytes"] if graphs and default["cudagraph_bytes"] else None,
    )


def _median(values: Iterable[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def offsets(gaps: list[Gap], model: str | None, tp: int | None) -> Offsets:
    """The median gaps of one group (weights only for one model at one TP)."""
    weights = _median(g.weights for g in gaps) if model is not None and tp is not None else None
    return Offsets(
        model=model,
        tensor_parallel_size=tp,
        activation_per_token_compiling=_median(g.activation_per_token for g in gaps if g.compiles),
        activation_per_token=_median(g.activation_per_token for g in gaps if not g.compiles),
        non_torch_bytes=int(_median(g.non_torch for g in gaps) or 0),
        weights_bytes=int(weights or 0),
        cudagraph_ratio=_median(g.graph_ratio for g in gaps) or 1.0,
    )


def grouped(gaps: list[Gap]) -> tuple[Offsets, ...]:
    """Offsets for every (model, TP), (any model, TP), (model, any TP) and (any, any) seen."""
    keys: list[tuple[str | None, int | None]] = []
    for g in gaps:
        for key in ((g.model, g.tp), (None, g.tp), (g.model, None), (None, None)):
            if key not in keys:
                keys.append(key)
    return tuple(
        offsets([g for g in gaps if key[0] in (None, g.model) and key[1] in (None, g.tp)], *key) for key in keys
    )


def correction(
    records: Iterable[dict[str, Any]],
    gpu: str,
    vllm_version: str,
    variants: Mapping[str, Variant],
    compute_capability: tuple[int, int] = (9, 0),
    model: str | None = None,
) -> tuple[Calibration, str] | None:
    """The calibration the matching records imply, and a note saying so; else None.

    `variants`: each record's model by the name it was recorded under (records of a model that
    cannot be read any more are left out). `model`: the model being planned, for the note.
    """
    used = [r for r in matching(records, gpu, vllm_version) if r.get("model") in variants]
    if not used:
        return None
    found = target(vllm_version, "asked")
    rules = found.rules if found else BASELINE
    gaps = [gap(r, variants[r["model"]], compute_capability, rules) for r in used]
    groups = grouped(gaps)
    cal = replace(CALIBRATION, offsets=groups, recorded_starts=len(used))
    mine = [g for g in gaps if g.model == model]
    shown = cal.offsets_for(model or "", (mine or gaps)[-1].tp)
    whose = "this model" if mine else "Qwen3 models on this GPU"
    tps = ", ".join(f"TP {tp}" for tp in sorted({g.tp for g in gaps}))
    note = (
        f"Overheads calibrated from {len(used)} `qwdeploy serve` record(s) of {whose} "
        f"({gpu}, vLLM {_minor(vllm_version)}; {tps}): peak activation "
        f"{shown.activation_per_token_for(True):+.0f} B per batched token, non-torch "
        f"{shown.non_torch_bytes / GiB:+.2f} GiB, CUDA graphs ×{shown.cudagraph_ratio:.2f} vs the default "
        f"model."
    )
    return cal, note
