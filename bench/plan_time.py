"""Whole-process time of `qwdeploy plan` (goal: <= 0.3 s) and the heavy modules it must not import.

Run: python bench/plan_time.py [--runs 10]. Reports the median of `--json` and of the table output,
and their ratios to the 0.3 s goal. Like an installed package, the modules run from bytecode: one
untimed run per case writes it even where PYTHONDONTWRITEBYTECODE is set.
"""

from __future__ import annotations

import argparse
import json
import os
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
    "import sys; sys.argv = ['qwdeploy', 'plan', *sys.argv[1:]];\n"
    "import atexit, json\n"
    "atexit.register(lambda: sys.stderr.write('HEAVY=' + json.dumps(sorted(m for m in {heavy} if m in sys.modules)) + '\\n'))\n"
    "from qwdeploy.cli import main; main()"
)


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_once(case: list[str]) -> tuple[float, list[str]]:
    code = PROBE.format(heavy=repr(HEAVY))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *case], capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - start
    heavy_line = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY=")]
    return elapsed, json.loads(heavy_line[-1][6:]) if heavy_line else ["?"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    goal = 0.3
    report = []
    for case in CASES:
        row: dict[str, object] = {"case": " ".join(case)}
        heavy: set[str] = set()
        for output, argv in (("json", [*case, "--json"]), ("table", case)):
            run_once(argv)  # writes the bytecode, as an install has it
            times = []
            for _ in range(args.runs):
                t, h = run_once(argv)
                times.append(t)
                heavy |= set(h)
            median = statistics.median(times)
            row[f"{output}_median_s"] = round(median, 3)
            row[f"{output}_ratio_to_goal"] = round(median / goal, 2)
        row["heavy_imports"] = sorted(heavy)
        report.append(row)
    print(json.dumps({"goal_s": goal, "runs": args.runs, "cases": report}, indent=2))


if __name__ == "__main__":
    main()
