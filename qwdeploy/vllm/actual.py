"""Plan vs actual: what the plan expects vLLM to log, next to what it logged. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwdeploy.planning.kv import kv_capacity
from qwdeploy.planning.plan import Plan
from qwdeploy.units import GiB
from qwdeploy.vllm.cpu import CpuKv
from qwdeploy.vllm.log import StartupReport


def predictions(plan: Plan, device: str, kv: CpuKv | None = None) -> dict[str, Any]:
    """What the plan expects vLLM to log, per GPU (or for the CPU node)."""
    m, cap = plan.memory, plan.capacity
    if device == "cpu":
        out: dict[str, Any] = {"weights_bytes": m.weights_bytes}
        if kv is not None and kv.space_gib is not None:
            c = kv_capacity(kv.space_gib * GiB, plan.variant.spec, plan.kv_cache_dtype, 1, plan.max_model_len)
            out.update(
                kv_cache_bytes=kv.space_gib * GiB, kv_cache_tokens=c.tokens, max_concurrency=round(c.max_concurrency, 2)
            )
        return out
    return {
        "weights_bytes": m.weights_bytes,
        "activation_bytes": m.activation_bytes,
        "non_torch_bytes": m.non_torch_bytes,
        "cudagraph_bytes": m.cudagraph_bytes,
        "kv_cache_bytes": max(0, m.kv_cache_bytes),
        "kv_cache_tokens": cap.tokens,
        "max_concurrency": round(cap.max_concurrency, 2),
    }


@dataclass(frozen=True)
class Row:
    label: str
    unit: str  # "bytes", "tokens", "x" or "s"
    predicted: float | None
    actual: float | None

    @property
    def error(self) -> float | None:
        """(actual − predicted) / predicted, where both are known and predicted is not 0."""
        if self.predicted in (None, 0) or self.actual is None:
            return None
        return (self.actual - self.predicted) / self.predicted


COMPARED = (
    ("weights", "weights_bytes", "bytes"),
    ("peak activation", "activation_bytes", "bytes"),
    ("non-torch memory", "non_torch_bytes", "bytes"),
    ("CUDA graphs", "cudagraph_bytes", "bytes"),
    ("KV cache", "kv_cache_bytes", "bytes"),
    ("KV cache tokens", "kv_cache_tokens", "tokens"),
    ("max concurrency", "max_concurrency", "x"),
)


def compare(
    predicted: dict[str, Any], report: StartupReport, start_s: tuple[float | None, float | None] | None = None
) -> list[Row]:
    """Plan vs what vLLM's log says, for every figure at least one side knows."""
    rows = [Row(label, unit, predicted.get(key), getattr(report, key)) for label, key, unit in COMPARED]
    rows = [r for r in rows if r.predicted is not None or r.actual is not None]
    if start_s is not None:
        rows.append(Row("seconds to ready", "s", start_s[0], start_s[1]))
    return rows
