"""Real vLLM runs the planner is checked against: the shared ground truth + our device runs (tests/data/vllm_runs)."""

from __future__ import annotations

import json
from pathlib import Path

from qwdeploy import PlanRequest
from qwdeploy.planning.plan import Pins

ROOT = Path(__file__).resolve().parent.parent
GiB = 1 << 30


def load_runs() -> list[dict]:
    """Every recorded H100 run, normalised to one shape."""
    runs = []
    gt = json.loads((ROOT / "tests/data/vllm_runs/h100_vllm0.26.0_groundtruth.json").read_text())
    for r in gt["runs"]:
        runs.append({**r, "source": "groundtruth"})
    raw = ROOT / "tests/data/vllm_runs/h100"
    for f in sorted(raw.glob("*.json")) if raw.is_dir() else []:
        run = _from_device_run(json.loads(f.read_text()))
        if run is not None:
            runs.append({**run, "source": f"tests/data/vllm_runs/h100/{f.name}"})
    return runs


def _from_device_run(r: dict) -> dict | None:
    """A bench/gpu/run_vllm.py result, flattened; None for runs that neither started nor refused."""
    if not isinstance(r, dict) or "repo_id" not in r:
        return None
    log = r.get("log") or {}
    refused = bool(r.get("refused"))
    if not refused and not log.get("kv_tokens"):
        return None
    run = {k: v for k, v in r.items() if k not in ("log", "child", "llm_kwargs", "gpu_before_go")}
    run.update({k: v for k, v in log.items() if not isinstance(v, list)})
    run["run"] = r.get("name", "?")
    run["throughput"] = (r.get("child") or {}).get("throughput") or {}
    if (r.get("child") or {}).get("proc_start_to_ready_s"):
        run["proc_start_to_ready_s"] = r["child"]["proc_start_to_ready_s"]
    run["refused"] = refused
    run.setdefault("tp", 1)
    if (r.get("llm_kwargs") or {}).get("hf_overrides"):
        run["profile"] = "long-context"
    return run


def plan_args(run: dict) -> list[str]:
    """`qwdeploy plan` arguments that reproduce a run's settings on an H100."""
    args = [
        "plan",
        run["repo_id"],
        "--gpu",
        "H100-80GB",
        "--num-gpus",
        "1",
        "--tensor-parallel-size",
        str(run.get("tp", 1)),
        "--max-model-len",
        str(run["max_model_len"]),
        "--gpu-memory-utilization",
        str(run["gpu_memory_utilization"]),
        "--max-num-seqs",
        str(run["max_num_seqs"]),
        "--max-num-batched-tokens",
        str(run["max_num_batched_tokens"]),
        "--kv-cache-dtype",
        "fp8" if str(run.get("kv_cache_dtype", "auto")).startswith("fp8") else "auto",
        "--enforce-eager" if run.get("enforce_eager") else "--cuda-graphs",
        "--json",
    ]
    if run.get("warm_compile_cache") and not run.get("enforce_eager"):
        args += ["--compile-cache", "warm"]
    if run.get("profile"):
        args += ["--profile", run["profile"]]
    elif run["max_model_len"] > 40960 and "2507" not in run["repo_id"]:
        args += ["--profile", "long-context"]
    return args


def run_request(run: dict) -> PlanRequest:
    """The library request that reproduces a run's settings on one H100 (what plan_args says)."""
    pins = Pins(
        tensor_parallel_size=run.get("tp", 1),
        max_model_len=run["max_model_len"],
        gpu_memory_utilization=run["gpu_memory_utilization"],
        kv_cache_dtype="fp8" if str(run.get("kv_cache_dtype", "auto")).startswith("fp8") else "auto",
        max_num_seqs=run["max_num_seqs"],
        max_num_batched_tokens=run["max_num_batched_tokens"],
        enforce_eager=bool(run.get("enforce_eager")),
    )
    return PlanRequest(run["repo_id"], profile=run.get("profile") or "chat", gpu="H100-80GB", num_gpus=1, pins=pins)
