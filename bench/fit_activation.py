"""Fit the activation-peak constants of memory.Calibration on every real vLLM run.

    python bench/fit_activation.py

vLLM's profile run peaks at max_num_batched_tokens × (act_i × intermediate_per_rank + act_h ×
hidden + act_c) bytes for the forward pass (MoE: intermediate = top_k × moe_intermediate).
Runs with compiled graphs (not eager) whose forward pass dominates the sampler are fitted by
least squares on bytes per token; the residual of every run is printed so a model change shows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from vllm_runs import GiB, load_runs  # noqa: E402

from qwdeploy.planning import catalog, memory  # noqa: E402
from qwdeploy.planning.engine import Engine  # noqa: E402


def features(run: dict) -> tuple[list[float], float] | None:
    if not run.get("peak_activation_GiB") or run.get("enforce_eager"):
        return None
    v = catalog.get(run["repo_id"])
    s, tp = v.spec, run.get("tp", 1)
    inter = (s.num_experts_per_tok * s.moe_intermediate_size if s.is_moe else s.intermediate_size) / tp
    tokens = run["max_num_batched_tokens"]
    return [inter, s.hidden_size, 1.0], run["peak_activation_GiB"] * GiB / tokens


def main() -> None:
    runs = load_runs()
    rows = [(r, f) for r in runs if (f := features(r))]
    # The forward constants come from runs whose forward pass sets the peak: mnbt 16384 (cold)
    # and warm-cache restarts; the others peak while compiling (see qwdeploy/planning/calibration.py).
    dense = [
        (r, f)
        for r, f in rows
        if not catalog.get(r["repo_id"]).spec.is_moe
        and catalog.get(r["repo_id"]).spec.quantization is None
        and (r["max_num_batched_tokens"] >= 16384 or r.get("warm_compile_cache"))
    ]
    x = np.array([f[0] for _, f in dense])
    y = np.array([f[1] for _, f in dense])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    print(f"fitted on {len(dense)} dense bf16 runs: act_i={coef[0]:.3f} act_h={coef[1]:.3f} act_c={coef[2]:.0f}")
    print(f"{'run':34s} {'model':32s} {'mnbt':>6s} {'actual':>7s} {'model':>7s} {'err GiB':>8s}")
    for r in runs:
        if not r.get("peak_activation_GiB"):
            continue
        v = catalog.get(r["repo_id"])
        pred = (
            memory.activation_bytes(
                v,
                Engine(
                    tensor_parallel_size=r.get("tp", 1),
                    max_num_batched_tokens=r["max_num_batched_tokens"],
                    max_num_seqs=r["max_num_seqs"],
                    enforce_eager=bool(r.get("enforce_eager")),
                    compile_cache_warm=bool(r.get("warm_compile_cache")),
                ),
            )
            / GiB
        )
        print(
            f"{r['run']:34s} {r['repo_id']:32s} {r['max_num_batched_tokens']:6d} "
            f"{r['peak_activation_GiB']:7.2f} {pred:7.2f} {pred - r['peak_activation_GiB']:+8.2f}"
        )


if __name__ == "__main__":
    main()
