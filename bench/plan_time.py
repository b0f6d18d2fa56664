"""Whole-process time of `qwdeploy plan` (goal: <= 0.5 s) and the heavy modules it must not import.

Run: python bench/plan_time.py [--runs 10]. Reports the median and the ratio to the 0.5 s goal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "vllm", "modelscope", "huggingface_hub", "transformers")
CASES = [
    ["Qwen/Qwen3-8B", "--gpu", "H100", "--num-gpus", "1"],
    ["Qwen/Qwen3-235B-A22B", "--gpu", "H100", "--num-gpus", "8", "--profile", "cost"],
    ["Qwen/Qwen3-32B", "--gpu", "L40S", "--num-gpus", "1"],
]
PROBE = (
    "import sys, runpy; sys.argv = ['qwdeploy', 'plan', *sys.argv[1:], '--json'];\n"
    "import atexit, json\n"
    "atexit.register(lambda: sys.stderr.write('HEAVY=' + json.dumps(sorted(m for m in {heavy} if m in sys.modules)) + '\\n'))\n"
    "from qwdeploy.cli import main; main()"
)


def run_once(case: list[str]) -> tuple[float, list[str]]:
    code = PROBE.format(heavy=repr(HEAVY))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *case], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    heavy_line = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY=")]
    return elapsed, json.loads(heavy_line[-1][6:]) if heavy_line else ["?"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    goal = 0.5
    report = []
    for case in CASES:
        times, heavy = [], set()
        for _ in range(args.runs):
            t, h = run_once(case)
            times.append(t)
            heavy |= set(h)
        median = statistics.median(times)
        report.append(
            {
                "case": " ".join(case),
                "median_s": round(median, 3),
                "ratio_to_goal": round(median / goal, 2),
                "heavy_imports": sorted(heavy),
            }
        )
    print(json.dumps({"goal_s": goal, "runs": args.runs, "cases": report}, indent=2))


if __name__ == "__main__":
    main()
