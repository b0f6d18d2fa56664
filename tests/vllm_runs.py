"""Real vLLM runs the planner is checked against: shared ground truth + bench/results/raw."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GiB = 1 << 30


def load_runs() -> list[dict]:
    """Every recorded H100 run, normalised to one shape."""
    runs = []
    gt = json.loads((ROOT / "tests/data/vllm_runs/h100_vllm0.26.0_groundtruth.json").read_text())
    for r in gt["runs"]:
        runs.append({**r, "source": "groundtruth"})
    raw = ROOT / "bench/results/raw"
    for f in sorted(raw.glob("*.json")) if raw.is_dir() else []:
        r = json.loads(f.read_text())
        if isinstance(r, dict) and r.get("repo_id") and (r.get("kv_tokens") or r.get("refused")):
            runs.append({**r, "source": f"bench/results/raw/{f.name}"})
    return runs


def plan_args(run: dict) -> list[str]:
    """`qwdeploy plan` arguments that reproduce a run's settings on an H100."""
    args = ["plan", run["repo_id"], "--gpu", "H100-80GB", "--num-gpus", "1",
            "--tensor-parallel-size", str(run.get("tp", 1)),
            "--max-model-len", str(run["max_model_len"]),
            "--gpu-memory-utilization", str(run["gpu_memory_utilization"]),
            "--max-num-seqs", str(run["max_num_seqs"]),
            "--max-num-batched-tokens", str(run["max_num_batched_tokens"]),
            "--kv-cache-dtype", "fp8" if str(run.get("kv_cache_dtype", "auto")).startswith("fp8") else "auto",
            "--enforce-eager" if run.get("enforce_eager") else "--cuda-graphs", "--json"]
    if run.get("profile"):
        args += ["--profile", run["profile"]]
    elif run["max_model_len"] > 40960 and "2507" not in run["repo_id"]:
        args += ["--profile", "long-context"]
    return args
