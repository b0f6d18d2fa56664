#!/usr/bin/env python3
"""Turn (model, profile) pairs into run_vllm.py cases: exactly the settings `qwdeploy plan` picks.

    python bench/gpu/plan_cases.py --gpu H100 --out bench/gpu/cases_matrix.json

Each case runs the plan's max_model_len, gpu_memory_utilization, max_num_seqs,
max_num_batched_tokens, kv_cache_dtype, eager flag and hf_overrides in real vLLM; cases marked
`bench` also time decode at batch 1 and at the plan's predicted concurrency.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import qwdeploy  # noqa: E402

# (repo, profile, time decode?) in the order they should run; the first ones matter most.
MATRIX = [
    ("Qwen/Qwen3-32B", "long-context", False),
    ("Qwen/Qwen3-30B-A3B", "throughput", True),
    ("Qwen/Qwen3-8B-FP8", "low-latency", True),
    ("Qwen/Qwen3-14B-FP8", "cost", False),
    ("Qwen/Qwen3-8B-AWQ", "agent", False),
    ("Qwen/Qwen3-4B", "long-context", False),
    ("Qwen/Qwen3-4B-FP8", "throughput", False),
    ("Qwen/Qwen3-32B-AWQ", "chat", False),
    ("Qwen/Qwen3-32B-FP8", "agent", False),
    ("Qwen/Qwen3-14B", "low-latency", False),
    ("Qwen/Qwen3-8B", "throughput", True),
    ("Qwen/Qwen3-30B-A3B-FP8", "long-context", False),
    ("Qwen/Qwen3-14B-AWQ", "throughput", False),
    ("Qwen/Qwen3-32B", "low-latency", False),
    ("Qwen/Qwen3-4B-AWQ", "cost", False),
    ("Qwen/Qwen3-30B-A3B", "agent", True),
    ("Qwen/Qwen3-8B", "cost", False),
    ("Qwen/Qwen3-14B", "agent", False),
    ("Qwen/Qwen3-32B-FP8", "chat", False),
    ("Qwen/Qwen3-4B", "chat", False),
    ("Qwen/Qwen3-8B-AWQ", "low-latency", False),
    ("Qwen/Qwen3-14B-FP8", "long-context", False),
]

# DeepGEMM JIT costs minutes per new FP8 model on a cold machine (bench/results/raw/g03); the
# matrix measures memory, so FP8 cases use vLLM's CUTLASS block-FP8 kernels unless timed.
NO_DEEP_GEMM = {"VLLM_USE_DEEP_GEMM": "0"}


def case_for(repo: str, profile: str, timed: bool, gpu: str) -> dict:
    plan = qwdeploy.plan(qwdeploy.PlanRequest(repo, profile=profile, gpu=gpu))
    j = plan.to_json()
    slug = repo.split("/")[1].lower().replace("qwen3-", "q").replace("-", "")
    case = {
        "name": f"m_{slug}_{profile.replace('-', '')}",
        "repo_id": repo,
        "profile": profile,
        "max_model_len": j["max_model_len"],
        "gpu_memory_utilization": j["gpu_memory_utilization"],
        "max_num_batched_tokens": j["max_num_batched_tokens"],
        "max_num_seqs": j["max_num_seqs"],
        "kv_cache_dtype": j["kv_cache_dtype"],
        "enforce_eager": j["enforce_eager"],
        "planned_fits": j["fits"],
        "planned_kv_tokens": j["kv_cache_tokens"],
        "timeout_s": 420,
    }
    if j.get("hf_overrides"):
        case["hf_overrides"] = j["hf_overrides"]
    if j["quantization"] == "fp8" and not timed:
        case["env"] = dict(NO_DEEP_GEMM)
    if timed:
        conc = (j.get("performance") or {}).get("predicted_decode_concurrency") or 1
        case["bench"] = {"decode_batches": sorted({1, int(conc)}), "in_len": 128, "out_len": 256}
        case["timeout_s"] = 540
    return case


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--out", default=str(ROOT / "bench" / "gpu" / "cases_matrix.json"))
    a = ap.parse_args()
    cases = [case_for(repo, profile, timed, a.gpu) for repo, profile, timed in MATRIX]
    Path(a.out).write_text(json.dumps(cases, indent=1) + "\n")
    for c in cases:
        print(
            c["name"],
            c["max_model_len"],
            c["gpu_memory_utilization"],
            c["max_num_seqs"],
            c["max_num_batched_tokens"],
            c["kv_cache_dtype"],
            c.get("bench", ""),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
