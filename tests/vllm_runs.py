"""Real vLLM runs the planner is checked against: the shared ground truth + our device runs (tests/data/vllm_runs)."""

from __future__ import annotations

import json
from pathlib import Path

from qwdeploy import PlanRequest
from qwdeploy.planning.plan import Pins
from qwdeploy.planning.versions import VALIDATED_VERSION

ROOT = Path(__file__).resolve().parent.parent
GiB = 1 << 30


def load_runs() -> list[dict]:
    """Every recorded run (H100; 2 × H200 at TP 2), normalised to one shape."""
    runs = []
    gt = json.loads((ROOT / "tests/data/vllm_runs/h100_vllm0.26.0_groundtruth.json").read_text())
    for r in gt["runs"]:
        runs.append({**r, "source": "groundtruth"})
    for machine, gpu in MACHINES.items():
        raw = ROOT / "tests/data/vllm_runs" / machine
        for f in sorted(raw.glob("*.json")) if raw.is_dir() else []:
            run = _from_device_run(json.loads(f.read_text()))
            if run is not None:
                shared = machine in SHARED_CACHE_ROOT
                source = f"tests/data/vllm_runs/{machine}/{f.name}"
                runs.append({**run, "gpu": gpu, "source": source, "shared_cache_root": shared})
    return runs


# our device runs: folder -> the GPU they ran on
MACHINES = {"h100": "H100-80GB", "h200x2": "H200"}
# 2 × H200: every case ran with one VLLM_CACHE_ROOT (bench/results/h200x2/README.md), so only the
# first start JIT-compiled vLLM's sampler and Triton kernels
SHARED_CACHE_ROOT = {"h200x2"}
# Benchmarks that do not show the steady state, with the evidence (vLLM's own log line).
EXCLUDED_BENCHMARKS = {
    ("t06_q30ba3b_bf16", "decode_b256"): "Triton JIT-compiled fused_moe_kernel during this benchmark "
    "(log 22:48:11: 'Triton kernel JIT compilation during inference')",
}


def _exact(r: dict) -> dict:
    """Per-rank bytes read from vLLM's worker (TP runs; rank 0, every rank was identical)."""
    workers = (r.get("child") or {}).get("workers") or []
    if not workers:
        return {}
    w = workers[0]
    return {
        "weights_bytes": w.get("model_memory_usage"),
        "activation_bytes": w.get("peak_activation_memory"),
        "non_torch_bytes": w.get("non_torch_memory"),
        "kv_cache_bytes": w.get("available_kv_cache_memory_bytes"),
        "cudagraph_bytes": (w.get("probe") or {}).get("graph_capture_bytes"),
        "held_at_snapshot_bytes": w.get("init_snapshot_cuda_memory"),
        "total_bytes": w.get("init_snapshot_total_memory"),
    }


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
    run["throughput"] = {
        k: v
        for k, v in ((r.get("child") or {}).get("throughput") or {}).items()
        if (run["run"], k) not in EXCLUDED_BENCHMARKS
    }
    run["died_at_first_request"] = "error" in run["throughput"]  # started, then ran out of memory
    if (r.get("child") or {}).get("proc_start_to_ready_s"):
        run["proc_start_to_ready_s"] = r["child"]["proc_start_to_ready_s"]
    run["refused"] = refused
    run["tp"] = r.get("tensor_parallel_size", 1)
    run["gpu_memory_utilization"] = log.get("gmu_logged") or r["gpu_memory_utilization"]
    run["exact"] = _exact(r)
    if (r.get("llm_kwargs") or {}).get("hf_overrides"):
        run["profile"] = "long-context"
    return run


def plan_args(run: dict) -> list[str]:
    """`qwdeploy plan` arguments that reproduce a run's settings on its GPUs."""
    args = [
        "plan",
        run["repo_id"],
        "--gpu",
        run.get("gpu", "H100-80GB"),
        "--num-gpus",
        str(run.get("tp", 1)),
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
        "--vllm-version",
        VALIDATED_VERSION,  # every recorded run is vLLM 0.26.0
        "--json",
    ]
    if run.get("warm_compile_cache") and not run.get("enforce_eager"):
        args += ["--compile-cache", "warm"]
    return args + ["--profile", run.get("profile") or _profile(run)]


def run_request(run: dict) -> PlanRequest:
    """The library request that reproduces a run's settings on its GPUs (what plan_args says)."""
    pins = Pins(
        tensor_parallel_size=run.get("tp", 1),
        max_model_len=run["max_model_len"],
        gpu_memory_utilization=run["gpu_memory_utilization"],
        kv_cache_dtype="fp8" if str(run.get("kv_cache_dtype", "auto")).startswith("fp8") else "auto",
        max_num_seqs=run["max_num_seqs"],
        max_num_batched_tokens=run["max_num_batched_tokens"],
        enforce_eager=bool(run.get("enforce_eager")),
        compile_cache_warm=bool(run.get("warm_compile_cache")) and not run.get("enforce_eager"),
    )
    gpu, profile = run.get("gpu", "H100-80GB"), run.get("profile") or _profile(run)
    tp = run.get("tp", 1)
    return PlanRequest(run["repo_id"], profile=profile, gpu=gpu, num_gpus=tp, pins=pins, vllm_version=VALIDATED_VERSION)


def _profile(run: dict) -> str:
    return "long-context" if run["max_model_len"] > 40960 and "2507" not in run["repo_id"] else "chat"
