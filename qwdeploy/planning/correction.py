"""Plan vs actual: the correction `plan` draws from what vLLM really got at each `serve`. Pure.

Every successful `qwdeploy serve` records the GPU, the vLLM version, the model, the settings,
what the plan predicted and what vLLM's log says it got (qwdeploy.vllm.records). `correction`
turns the records of one GPU + vLLM version into a corrected `Calibration`: the overheads the
memory model cannot derive from config.json (peak activation, non-torch memory, CUDA graphs)
move by the median of what the records measured against the default model. Each record keeps
the default model's figures for its settings (`baseline`), so a correction never feeds on an
earlier correction. Records without vLLM's "Actual usage" line (CPU runs) correct nothing.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from qwdeploy.planning.calibration import CALIBRATION, Calibration
from qwdeploy.planning.engine import Engine
from qwdeploy.planning.memory import activation_bytes, cudagraph_bytes, non_torch_bytes
from qwdeploy.planning.plan import Plan
from qwdeploy.units import GiB


def baseline(plan: Plan, compile_cache_warm: bool = False) -> dict[str, int]:
    """The default memory model's overheads for the plan's settings (what a record corrects)."""
    v = plan.variant
    engine = Engine(
        tensor_parallel_size=plan.tensor_parallel_size,
        max_num_batched_tokens=plan.max_num_batched_tokens,
        max_num_seqs=plan.max_num_seqs,
        enforce_eager=plan.enforce_eager,
        compile_cache_warm=compile_cache_warm,
    )
    return {
        "activation_bytes": activation_bytes(v, engine),
        "non_torch_bytes": non_torch_bytes(plan.tensor_parallel_size, variant=v),
        "cudagraph_bytes": cudagraph_bytes(v, engine),
    }


def _gpu_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("nvidia", ""))


def _minor(version: str | None) -> str:
    parts = (version or "").split("+")[0].split(".")
    return ".".join(parts[:2])


def matching(records: Iterable[dict[str, Any]], gpu: str, vllm_version: str) -> list[dict[str, Any]]:
    """Records of this GPU kind and vLLM minor version that measured the overheads."""
    out = []
    for r in records:
        a, b = r.get("actual") or {}, r.get("baseline") or {}
        if (
            _gpu_key(str(r.get("gpu", ""))) == _gpu_key(gpu)
            and _minor(r.get("vllm_version")) == _minor(vllm_version)
            and all(
                isinstance(a.get(k), (int, float)) and isinstance(b.get(k), (int, float))
                for k in ("activation_bytes", "non_torch_bytes")
            )
        ):
            out.append(r)
    return out


def correction(
    records: Iterable[dict[str, Any]],
    gpu: str,
    vllm_version: str,
    model: str | None = None,
    base: Calibration = CALIBRATION,
) -> tuple[Calibration, str] | None:
    """The overhead calibration the matching records imply, and a note saying so; else None.

    Records of `model` win when there are any; otherwise every model's records on this GPU.
    Peak activation: act_c (bytes per batched token) moves by the median of
    (actual − baseline) / (max_num_batched_tokens × the eager factor when eager).
    Non-torch memory moves by the median of (actual − baseline). CUDA-graph memory scales by
    the median of actual / baseline over runs with graphs.
    """
    found = matching(records, gpu, vllm_version)
    same = [r for r in found if model and r.get("model") == model]
    used = same or found
    if not used:
        return None
    per_token, non_torch, graphs = [], [], []
    for r in used:
        a, b, s = r["actual"], r["baseline"], r.get("settings") or {}
        mnbt = s.get("max_num_batched_tokens") or 0
        if mnbt:
            factor = base.eager_activation_factor if s.get("enforce_eager") else 1.0
            per_token.append((a["activation_bytes"] - b["activation_bytes"]) / (mnbt * factor))
        non_torch.append(a["non_torch_bytes"] - b["non_torch_bytes"])
        if b.get("cudagraph_bytes") and isinstance(a.get("cudagraph_bytes"), (int, float)):
            graphs.append(a["cudagraph_bytes"] / b["cudagraph_bytes"])
    d_act = statistics.median(per_token) if per_token else 0.0
    d_nt = int(statistics.median(non_torch))
    ratio = statistics.median(graphs) if graphs else 1.0
    cal = replace(
        base,
        act_c=base.act_c + d_act,
        non_torch_bytes=max(0, base.non_torch_bytes + d_nt),
        graph_per_size_per_layer=base.graph_per_size_per_layer * ratio,
        graph_per_seq_per_layer=base.graph_per_seq_per_layer * ratio,
    )
    whose = "this model" if same else "Qwen3 models on this GPU"
    note = (
        f"Overheads calibrated from {len(used)} `qwdeploy serve` record(s) of {whose} "
        f"({gpu}, vLLM {_minor(vllm_version)}): peak activation {d_act:+.0f} B per batched "
        f"token, non-torch {d_nt / GiB:+.2f} GiB, CUDA graphs ×{ratio:.2f} vs the default "
        f"model."
    )
    return cal, note
