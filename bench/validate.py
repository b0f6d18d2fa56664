"""Predicted vs actual for every real vLLM run we have (ground truth + tests/data/vllm_runs).

    python bench/validate.py            # writes bench/results/validation.json and .md

For each run, qwdeploy plans the same settings on the same GPUs (one H100; 2 × H200 at TP 2) and
the table compares weights, KV GiB, KV tokens, max concurrency, refused-or-not, start time and
decode/prefill throughput. The summary reports median and max relative errors overall and at
TP > 1 (goals: KV tokens within 0.5 %, weights within 0.3 %, decode within 10 %; no run planned as
fitting that vLLM refused or that died at its first request).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from typer.testing import CliRunner  # noqa: E402
from vllm_runs import EXCLUDED_BENCHMARKS, GiB, load_runs, plan_args, run_request  # noqa: E402

import qwdeploy  # noqa: E402
from qwdeploy.cli import app  # noqa: E402
from qwdeploy.planning import performance, startup  # noqa: E402


def _rel(pred: float | None, actual: float | None) -> float | None:
    if pred is None or not actual:
        return None
    return (pred - actual) / actual


def _plan(run: dict) -> dict:
    result = CliRunner().invoke(app, plan_args(run))
    return json.loads(result.stdout)


def _throughput(run: dict) -> dict:
    """Measured decode benchmarks of a run: {batch: (prompt, output, out tok/s)}."""
    out = {}
    if run.get("decode_batch1_tok_per_s"):  # ground truth: 512 tokens after a short prompt
        out[1] = (16, 512, run["decode_batch1_tok_per_s"])
    for key, item in (run.get("throughput") or {}).items():
        if key.startswith("decode_b") and isinstance(item, dict):
            out[int(item["batch"])] = (int(item["in_len"]), int(item["out_len"]), item["out_tok_per_s"])
    return out


def _actual_gib(run: dict, exact_key: str, logged_key: str) -> float | None:
    """vLLM's figure: the worker's exact bytes where recorded, else its log line (0.01 GiB)."""
    exact = (run.get("exact") or {}).get(exact_key)
    return round(exact / GiB, 4) if exact else run.get(logged_key)


def compare(run: dict) -> dict:
    plan = _plan(run)
    mem = plan["memory_per_gpu"]
    row = {
        "run": run["run"],
        "source": run["source"],
        "model": run["repo_id"],
        "settings": {
            k: run.get(k)
            for k in (
                "max_model_len",
                "gpu_memory_utilization",
                "max_num_seqs",
                "max_num_batched_tokens",
                "kv_cache_dtype",
                "enforce_eager",
            )
        },
        "gpu": run.get("gpu", "H100-80GB"),
        "tp": run.get("tp", 1),
        "refused_actual": bool(run.get("refused")),
        "died_at_first_request": bool(run.get("died_at_first_request")),
        "fits_predicted": plan["fits"],
        "gpu_memory_utilization_max": plan.get("gpu_memory_utilization_max"),
        "weights_GiB": [round(mem["weights_bytes"] / GiB, 4), _actual_gib(run, "weights_bytes", "weights_GiB")],
        "activation_GiB": [
            round(mem["activation_bytes"] / GiB, 4),
            _actual_gib(run, "activation_bytes", "peak_activation_GiB"),
        ],
        "non_torch_GiB": [round(mem["non_torch_bytes"] / GiB, 4), _actual_gib(run, "non_torch_bytes", "non_torch_GiB")],
        "cudagraph_GiB": [round(mem["cudagraph_bytes"] / GiB, 4), _actual_gib(run, "cudagraph_bytes", "cudagraph_GiB")],
        "kv_GiB": [
            round(mem["kv_cache_bytes"] / GiB, 4),
            _actual_gib(run, "kv_cache_bytes", "kv_cache_GiB") or run.get("available_kv_GiB"),
        ],
        "kv_tokens": [plan["kv_cache_tokens"], run.get("kv_tokens")],
        "max_concurrency": [plan["max_concurrency"], run.get("max_concurrency")],
        "max_model_len_limit": [plan["max_model_len_limit"], run.get("estimated_max_model_len")],
        "start_s": [_predict_start(run), run.get("proc_start_to_ready_s")],
    }
    row["kv_tokens_error"] = _rel(*row["kv_tokens"])
    row["weights_error"] = _rel(*row["weights_GiB"])
    measured = _throughput(run)
    if measured:
        p = _run_plan(run)
        row["decode_tok_per_s"] = {}
        for batch, (prompt, output, actual) in sorted(measured.items()):
            predicted = round(performance.benchmark_tokens_per_s(p, batch, prompt, output), 1)
            row["decode_tok_per_s"][batch] = [predicted, actual, _rel(predicted, actual)]
        prefill = (run.get("throughput") or {}).get("prefill_16x1024")
        if prefill:
            predicted = round(performance.prefill_tokens_per_s(p))
            row["prefill_tok_per_s"] = [
                predicted,
                prefill["prefill_tok_per_s"],
                _rel(predicted, prefill["prefill_tok_per_s"]),
            ]
    return row


def _run_plan(run: dict):
    return qwdeploy.plan(run_request(run))


def _predict_start(run: dict) -> float:
    """Predicted process-start-to-ready seconds; the runs use dummy weights and a cold cache."""
    phases = startup.cold_start_s(_run_plan(run), weights_from_disk=False)
    if (run.get("env_overrides") or {}).get("VLLM_USE_DEEP_GEMM") == "0":
        phases["deep_gemm_jit_cold_s"] = 0.0  # the run switched DeepGEMM off
    llm_class_caches = not run.get("shared_cache_root")
    return startup.start_seconds(phases, warm=bool(run.get("warm_compile_cache")), via_llm_class=llm_class_caches)


def _errors(rows: list[dict]) -> dict:
    kv = [abs(r["kv_tokens_error"]) for r in rows if r["kv_tokens_error"] is not None]
    w = [abs(r["weights_error"]) for r in rows if r["weights_error"] is not None]
    decode = [abs(v[2]) for r in rows for v in (r.get("decode_tok_per_s") or {}).values() if v[2] is not None]
    return {
        "runs": len(rows),
        "kv_tokens_error_median": statistics.median(kv) if kv else None,
        "kv_tokens_error_max": max(kv) if kv else None,
        "weights_error_median": statistics.median(w) if w else None,
        "weights_error_max": max(w) if w else None,
        "decode_error_median": statistics.median(decode) if decode else None,
        "decode_error_max": max(decode) if decode else None,
    }


def summarise(rows: list[dict]) -> dict:
    started = [r for r in rows if not r["refused_actual"]]
    return {
        **_errors(rows),
        "tensor_parallel": _errors([r for r in rows if r["tp"] > 1]),
        "planned_fit_but_vllm_refused": [r["run"] for r in rows if r["fits_predicted"] and r["refused_actual"]],
        "planned_fit_but_died_at_first_request": [
            r["run"] for r in started if r["fits_predicted"] and r["died_at_first_request"]
        ],
        "planned_refusal_but_vllm_served": [
            r["run"] for r in started if not r["fits_predicted"] and not r["died_at_first_request"]
        ],
        "excluded_measurements": {f"{run} {bench}": why for (run, bench), why in EXCLUDED_BENCHMARKS.items()},
    }


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:+.2f} %"


def _outcome(r: dict) -> str:
    actual = "refused" if r["refused_actual"] else "died at 1st request" if r["died_at_first_request"] else "served"
    return f"{actual} / {'fits' if r['fits_predicted'] else 'refused'}"


def _run_line(r: dict) -> str:
    s = r["settings"]
    return (
        f"| {r['run']} | {r['model']} | {r['gpu']} × {r['tp']} | {s['max_model_len']} | "
        f"{s['gpu_memory_utilization']} | {s['max_num_batched_tokens']} | {s['max_num_seqs']} | "
        f"{s['kv_cache_dtype']} | {bool(s['enforce_eager'])} | {_outcome(r)} | "
        f"{r['weights_GiB'][0]} / {r['weights_GiB'][1]} | {_pct(r['weights_error'])} | "
        f"{r['kv_tokens'][0]} / {r['kv_tokens'][1]} | {_pct(r['kv_tokens_error'])} | "
        f"{r['start_s'][0]} / {r['start_s'][1]} |"
    )


def markdown(rows: list[dict], summary: dict) -> str:
    lines = [
        "# Plan vs real vLLM 0.26.0 (H100 80GB; 2 × H200 at tensor parallel 2)",
        "",
        "Generated by `python bench/validate.py` from tests/data/vllm_runs. vLLM's figures: the "
        "worker's exact bytes where recorded (the TP 2 runs), else its log (0.01 GiB).",
        "",
        "| run | model | GPUs | mml | gmu | mnbt | mns | kv | eager | vLLM / plan | weights GiB (plan / vLLM) "
        "| error | KV tokens (plan / vLLM) | error | start s (plan / vLLM) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[_run_line(r) for r in rows],
        "",
        "## Decode throughput (tokens/s, predicted / measured)",
        "",
        "| run | GPUs | batch | predicted | measured | error |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for batch, (p, a, e) in (r.get("decode_tok_per_s") or {}).items():
            lines.append(f"| {r['run']} | {r['gpu']} × {r['tp']} | {batch} | {p} | {a} | {_pct(e)} |")
    lines += ["", "## Prefill (16 × 1024 tokens, tokens/s)", "", "| run | GPUs | predicted | measured | error |"]
    lines.append("|---|---|---|---|---|")
    for r in rows:
        if r.get("prefill_tok_per_s"):
            p, a, e = r["prefill_tok_per_s"]
            lines.append(f"| {r['run']} | {r['gpu']} × {r['tp']} | {p} | {a} | {_pct(e)} |")
    lines += ["", "## Summary", "", "```", json.dumps(summary, indent=1), "```", ""]
    return "\n".join(lines)


def main() -> None:
    rows = [compare(run) for run in load_runs()]
    summary = summarise(rows)
    out = ROOT / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation.json").write_text(json.dumps({"summary": summary, "runs": rows}, indent=1) + "\n")
    (out / "validation.md").write_text(markdown(rows, summary))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
