#!/usr/bin/env python3
"""First start vs restart of one plan on a GPU, with and without qwdeploy's cache handling.

Runs ON the device machine (vLLM 0.26.0 carried there, /work/shared/device/README.md), one start
per invocation so each device call stays under 10 minutes; results accumulate in --out.
Weights are dummy (`--load-format dummy`, real config.json from qwdeploy/data/configs), so the
start costs measured are import, engine set-up, compile, JIT kernels, profiling and graphs.

Cases (each pair shares its cache sub-root; "vanilla" ones start from an empty one):
  bf16-cold / bf16-restart          Qwen3-8B bf16, chat profile, qwdeploy's cache handling
  bf16-vanilla / -vanilla-restart   the same plan as plain vLLM in a fresh container (defaults)
  fp8-chat-cold / fp8-chat-restart  Qwen3-8B-FP8, chat profile (DeepGEMM warm-up skip)
  fp8-vanilla / -vanilla-restart    the same as plain vLLM (DeepGEMM warm-up relax)
  fp8-cold / fp8-restart            Qwen3-8B-FP8, low-latency profile
  bf16-nocache / fp8-nocache        qwdeploy's handling, but the cache did not persist

    python3 bench/gpu/coldstart_gpu.py --case bf16-cold --cache-root /root/qwcache \
        --out /root/out/coldstart_gpu.json

Results: bench/results/coldstart_gpu.md (run by bench/gpu/batch_coldstart.sh on a lent H100).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import qwdeploy  # noqa: E402
from qwdeploy.planning.plan import Pins  # noqa: E402
from qwdeploy.vllm import cache  # noqa: E402
from qwdeploy.vllm.warm import WarmOptions, warm_once  # noqa: E402

CASES = {
    # name: (model config, profile, cache sub-root, DeepGEMM override)
    "bf16-cold": ("Qwen--Qwen3-8B", "chat", "qwdeploy", None),
    "bf16-restart": ("Qwen--Qwen3-8B", "chat", "qwdeploy", None),
    "bf16-nocache": ("Qwen--Qwen3-8B", "chat", "nocache-bf16", None),
    "bf16-vanilla": ("Qwen--Qwen3-8B", "chat", "vanilla-bf16", None),
    "bf16-vanilla-restart": ("Qwen--Qwen3-8B", "chat", "vanilla-bf16", None),
    "fp8-cold": ("Qwen--Qwen3-8B-FP8", "low-latency", "qwdeploy", None),
    "fp8-restart": ("Qwen--Qwen3-8B-FP8", "low-latency", "qwdeploy", None),
    "fp8-nocache": ("Qwen--Qwen3-8B-FP8", "low-latency", "nocache-fp8", "relax"),
    "fp8-chat-cold": ("Qwen--Qwen3-8B-FP8", "chat", "qwdeploy-chat", None),
    "fp8-chat-restart": ("Qwen--Qwen3-8B-FP8", "chat", "qwdeploy-chat", None),
    "fp8-vanilla": ("Qwen--Qwen3-8B-FP8", "chat", "vanilla-fp8", None),
    "fp8-vanilla-restart": ("Qwen--Qwen3-8B-FP8", "chat", "vanilla-fp8", None),
}
# Cases whose first run starts from an empty cache (the directory is removed first).
FRESH = {"bf16-nocache", "bf16-vanilla", "fp8-nocache", "fp8-vanilla"}


def vanilla_env(where: Path) -> dict[str, str]:
    """Plain vLLM in a fresh container: every cache where vLLM/torch/Triton put it by default
    under an empty home (VLLM_CACHE_ROOT=~/.cache/vllm, DeepGEMM under it, ~/.triton, /tmp
    inductor), and vLLM's default DeepGEMM warm-up (relax). Nothing of qwdeploy's handling."""
    home = where / "home"
    return {
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "VLLM_CACHE_ROOT": str(home / ".cache" / "vllm"),
        "DG_JIT_CACHE_DIR": str(home / ".cache" / "vllm" / "deep_gemm"),
        "TRITON_CACHE_DIR": str(home / ".triton" / "cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(where / "torchinductor_root"),
        "FLASHINFER_WORKSPACE_BASE": str(home),
        "VLLM_DEEP_GEMM_WARMUP": "relax",
        "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    }  # what `vllm serve` sets for itself


EXTRA = ("--load-format", "dummy", "--skip-tokenizer-init")


def model_dir(config_name: str, where: Path) -> Path:
    """A local model directory holding only config.json (dummy weights need nothing else)."""
    d = where / config_name
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "qwdeploy" / "data" / "configs" / f"{config_name}.json", d / "config.json")
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", required=True, choices=sorted(CASES))
    ap.add_argument("--cache-root", default="/root/qwcache")
    ap.add_argument("--out", default="/root/out/coldstart_gpu.json")
    ap.add_argument("--max-model-len", type=int, default=32768)
    a = ap.parse_args()
    config, profile, sub, dg = CASES[a.case]
    root = Path(a.cache_root)
    if a.case in FRESH:
        shutil.rmtree(root / sub, ignore_errors=True)  # a restart whose cache did not persist
    env = vanilla_env(root / sub) if sub.startswith("vanilla") else None
    model = model_dir(config, root / "models")
    pins = Pins(max_model_len=a.max_model_len)
    plan = qwdeploy.plan(qwdeploy.PlanRequest(str(model), profile=profile, gpu="H100", pins=pins))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / f"coldstart_{a.case}.log"
    t = time.time()
    options = WarmOptions(
        cache_root=root / sub, extra_args=EXTRA, force=True, deep_gemm=dg, env=env, log_path=log, ready_timeout_s=590
    )
    r = warm_once(plan, options, device=cache.detect_device(plan))
    record = {
        "case": a.case,
        "model": config,
        "profile": profile,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": round(time.time() - t, 2),
        **r.to_json(),
    }
    results = json.loads(out.read_text()) if out.exists() else {}
    results[a.case] = record
    ready = {k: v["phases"].get("ready_s") for k, v in results.items() if "phases" in v}
    pairs = {
        "bf16_restart_over_cold": ("bf16-restart", "bf16-cold"),
        "bf16_restart_over_vanilla_cold": ("bf16-restart", "bf16-vanilla"),
        "bf16_vanilla_restart_over_vanilla_cold": ("bf16-vanilla-restart", "bf16-vanilla"),
        "fp8_restart_over_cold": ("fp8-restart", "fp8-cold"),
        "fp8_chat_restart_over_cold": ("fp8-chat-restart", "fp8-chat-cold"),
        "fp8_chat_restart_over_vanilla_cold": ("fp8-chat-restart", "fp8-vanilla"),
        "fp8_vanilla_restart_over_vanilla_cold": ("fp8-vanilla-restart", "fp8-vanilla"),
    }
    for name, (again, cold) in pairs.items():
        if ready.get(again) and ready.get(cold):
            results.setdefault("_ratios", {})[name] = round(ready[again] / ready[cold], 3)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        json.dumps(
            {"case": a.case, "ready": r.ready, "phases": r.phases, "found_cache": r.found_cache, "error": r.error},
            indent=2,
        )
    )
    return 0 if r.ready else 1


if __name__ == "__main__":
    raise SystemExit(main())
