"""`calibration.jsonl`: one record per `qwdeploy serve` start, what the plan said and what vLLM got.

The file lives in the cache root (qwdeploy.paths); `for_plan` reads it and hands the matching
records to the pure correction (qwdeploy.planning.correction).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwdeploy.errors import QwdeployError
from qwdeploy.paths import cache_root
from qwdeploy.planning import catalog
from qwdeploy.planning.calibration import Calibration
from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.correction import baseline, correction
from qwdeploy.planning.plan import Plan
from qwdeploy.vllm.install import installed_version

if TYPE_CHECKING:
    from qwdeploy.vllm.log import StartupReport

FILE = "calibration.jsonl"
SCHEMA = 1
FIGURES = (
    "weights_bytes",
    "activation_bytes",
    "non_torch_bytes",
    "cudagraph_bytes",
    "kv_cache_bytes",
    "kv_cache_tokens",
    "max_concurrency",
)


def path(env: Mapping[str, str] | None = None) -> Path:
    return cache_root(env) / FILE


@dataclass(frozen=True)
class Start:
    """One start of vLLM under a plan: where it ran, which vLLM, what the plan predicted."""

    gpu: str
    device: str  # "cuda" or "cpu"
    vllm_version: str
    predicted: Mapping[str, Any]
    seconds_to_ready: float | None
    extra: Mapping[str, Any] = field(default_factory=dict)  # more settings (CPU: the KV space)
    compile_cache_warm: bool = False  # vLLM found its compile cache (a cold compile peaks higher)
    now: float | None = None


def make_record(plan: Plan, report: StartupReport, start: Start) -> dict[str, Any]:
    """One start as a JSON-able record."""
    actual: dict[str, Any] = {k: getattr(report, k) for k in FIGURES}
    actual.update(
        seconds_to_ready=None if start.seconds_to_ready is None else round(start.seconds_to_ready, 2),
        init_engine_s=report.init_engine_s,
        compile_s=report.compile_s,
        graph_capture_s=report.graph_capture_s,
        weights_load_s=report.weights_load_s,
    )
    return {
        "schema": SCHEMA,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start.now)),
        "gpu": start.gpu,
        "device": start.device,
        "vllm_version": report.vllm_version or start.vllm_version,
        "model": plan.model,
        "settings": {**_settings(plan), "compile_cache_warm": start.compile_cache_warm, **dict(start.extra)},
        "predicted": {k: start.predicted.get(k) for k in (*FIGURES, "start_s") if k in start.predicted},
        "baseline": baseline(plan, start.compile_cache_warm),
        "actual": {k: v for k, v in actual.items() if v is not None},
    }


def _settings(plan: Plan) -> dict[str, Any]:
    return {
        "tensor_parallel_size": plan.tensor_parallel_size,
        "pipeline_parallel_size": plan.pipeline_parallel_size,
        "max_model_len": plan.max_model_len,
        "gpu_memory_utilization": plan.gpu_memory_utilization,
        "kv_cache_dtype": plan.kv_cache_dtype,
        "max_num_seqs": plan.max_num_seqs,
        "max_num_batched_tokens": plan.max_num_batched_tokens,
        "enforce_eager": plan.enforce_eager,
        "dtype": plan.dtype,
        "quantization": plan.quantization,
    }


def load(file: Path | None = None) -> list[dict[str, Any]]:
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


def append(record: dict[str, Any], file: Path | None = None) -> Path:
    """Add one record (one line, appended in a single write)."""
    file = file or path()
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    return file


def for_plan(
    gpu: str,
    variant: Variant,
    vllm_version: str | None = None,
    file: Path | None = None,
    compute_capability: tuple[int, int] = (9, 0),
) -> tuple[Calibration, str] | None:
    """The correction for planning `variant` on `gpu` with the vLLM that will run (installed,
    else the version the memory model targets), from the user's records; None without records."""
    found = load(file)
    if not found:
        return None
    version = vllm_version or installed_version()
    return correction(found, gpu, version, _variants(found, variant), compute_capability, variant.name)


def _variants(found: list[dict[str, Any]], planned: Variant) -> dict[str, Variant]:
    """Each recorded model that can still be read (a deleted local directory cannot)."""
    out = {planned.name: planned}
    for name in {str(r.get("model")) for r in found} - set(out):
        try:
            out[name] = catalog.get(name)
        except (QwdeployError, OSError, ValueError):
            continue
    return out
