"""Plan vs actual: what vLLM really got at each `serve`, and the correction `plan` draws from it.

Every successful `qwdeploy serve` appends one JSON line to `calibration.jsonl` in the user cache
($QWDEPLOY_CACHE_DIR, else $XDG_CACHE_HOME/qwdeploy, else ~/.cache/qwdeploy): the GPU, the vLLM
version, the model, the settings, what the plan predicted and what vLLM's log says it got.

`correction` turns the records of one GPU + vLLM version into a corrected `memory.Calibration`:
the overheads the memory model cannot derive from config.json (peak activation, non-torch
memory, CUDA graphs) move by the median of what the records measured against the default
model. Each record keeps the default model's figures for its settings (`baseline`), so a
correction never feeds on an earlier correction. Records without vLLM's "Actual usage" line
(CPU runs) are kept for the plan-vs-actual history but correct nothing.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Mapping

from qwdeploy import memory

FILE = "calibration.jsonl"
SCHEMA = 1
GiB = memory.GiB
FIGURES = (
    "weights_bytes",
    "activation_bytes",
    "non_torch_bytes",
    "cudagraph_bytes",
    "kv_cache_bytes",
    "kv_cache_tokens",
    "max_concurrency",
)


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """$QWDEPLOY_CACHE_DIR, else $XDG_CACHE_HOME/qwdeploy, else ~/.cache/qwdeploy."""
    env = os.environ if env is None else env
    if env.get("QWDEPLOY_CACHE_DIR"):
        return Path(env["QWDEPLOY_CACHE_DIR"]).expanduser()
    xdg = env.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "qwdeploy"


def path(env: Mapping[str, str] | None = None) -> Path:
    return cache_dir(env) / FILE


# ------------------------------------------------------------------------------------------
# Pure: a record


def baseline(plan, compile_cache_warm: bool = False) -> dict:
    """The default memory model's overheads for the plan's settings (what a record corrects)."""
    v, tp = plan.variant, plan.tensor_parallel_size
    mnbt, mns, eager = plan.max_num_batched_tokens, plan.max_num_seqs, plan.enforce_eager
    return {
        "activation_bytes": memory.activation_bytes(v, tp, mnbt, mns, eager, compile_cache_warm=compile_cache_warm),
        "non_torch_bytes": memory.non_torch_bytes(tp, variant=v),
        "cudagraph_bytes": memory.cudagraph_bytes(v, mns, mnbt, eager),
    }


def make_record(
    plan,
    report,
    *,
    gpu: str,
    device: str,
    vllm_version: str,
    predicted: dict,
    seconds_to_ready: float | None,
    extra: Mapping | None = None,
    compile_cache_warm: bool = False,
    now: float | None = None,
) -> dict:
    """One start as a JSON-able record. `report` is a vllm_log.StartupReport;
    `compile_cache_warm`: vLLM found its compile cache (a cold compile peaks higher)."""
    actual = {k: getattr(report, k) for k in FIGURES}
    actual.update(
        seconds_to_ready=None if seconds_to_ready is None else round(seconds_to_ready, 2),
        init_engine_s=report.init_engine_s,
        compile_s=report.compile_s,
        graph_capture_s=report.graph_capture_s,
        weights_load_s=report.weights_load_s,
    )
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return {
        "schema": SCHEMA,
        "time": stamp,
        "gpu": gpu,
        "device": device,
        "vllm_version": report.vllm_version or vllm_version,
        "model": plan.model,
        "settings": {
            "tensor_parallel_size": plan.tensor_parallel_size,
            "max_model_len": plan.max_model_len,
            "gpu_memory_utilization": plan.gpu_memory_utilization,
            "kv_cache_dtype": plan.kv_cache_dtype,
            "max_num_seqs": plan.max_num_seqs,
            "max_num_batched_tokens": plan.max_num_batched_tokens,
            "enforce_eager": plan.enforce_eager,
            "dtype": plan.dtype,
            "quantization": plan.quantization,
            "compile_cache_warm": compile_cache_warm,
            **dict(extra or {}),
        },
        "predicted": {k: predicted.get(k) for k in (*FIGURES, "start_s") if k in predicted},
        "baseline": baseline(plan, compile_cache_warm),
        "actual": {k: v for k, v in actual.items() if v is not None},
    }


# ------------------------------------------------------------------------------------------
# Pure: which records apply, and the correction


def _gpu_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("nvidia", ""))


def _minor(version: str | None) -> str:
    parts = (version or "").split("+")[0].split(".")
    return ".".join(parts[:2])


def matching(records: Iterable[dict], gpu: str, vllm_version: str) -> list[dict]:
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
    records: Iterable[dict],
    gpu: str,
    vllm_version: str,
    model: str | None = None,
    base: memory.Calibration = memory.CALIBRATION,
) -> tuple[memory.Calibration, str] | None:
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


# ------------------------------------------------------------------------------------------
# I/O: the file


def load(file: Path | None = None) -> list[dict]:
    """Every readable record (a cache: a damaged line is skipped, a missing file is empty)."""
    file = file or path()
    try:
        text = file.read_text()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("schema") == SCHEMA:
            out.append(rec)
    return out


def append(record: dict, file: Path | None = None) -> Path:
    """Add one record (one line, appended in a single write)."""
    file = file or path()
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    return file


def for_plan(
    gpu: str, model: str | None = None, vllm_version: str | None = None, file: Path | None = None
) -> tuple[memory.Calibration, str] | None:
    """The correction for planning `model` on `gpu` with the vLLM that will run (installed, else
    the version the memory model targets), from the user's records; None without records."""
    records = load(file)
    if not records:
        return None
    if vllm_version is None:
        from qwdeploy import launch

        found = launch.detect_vllm()
        vllm_version = found.version if found else memory.VLLM_VERSION
    return correction(records, gpu, vllm_version, model)
