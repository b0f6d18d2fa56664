#!/usr/bin/env python3
"""Summarise the TP=2 runs (bench/results/h200x2/raw/*.json): one row per case per rank, exact bytes,
next to what `qwdeploy plan` predicts for the same settings on 2 x H200.

    python bench/gpu/tp2/summarize_tp2.py bench/results/h200x2 [--no-plan]

Writes <dir>/summary.json and prints the markdown tables used in <dir>/README.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
GiB = 1 << 30
MiB = 1 << 20


def rank_rows(d: dict) -> list[dict]:
    ch = d.get("child") or {}
    eng = ch.get("engine") or {}
    lg = d.get("log") or {}
    tp = ch.get("throughput") or {}
    rows = []
    for w in ch.get("workers") or []:
        pr = w.get("probe") or {}
        total = w.get("init_snapshot_total_memory")
        row = {
            "case": d["name"],
            "rank": w.get("rank"),
            "pid": w.get("pid"),
            "model": d["repo_id"],
            "tp": d.get("tensor_parallel_size", 1),
            "max_model_len": eng.get("max_model_len"),
            "gmu": eng.get("gpu_memory_utilization"),
            "max_num_seqs": eng.get("max_num_seqs"),
            "max_num_batched_tokens": eng.get("max_num_batched_tokens"),
            "kv_cache_dtype": eng.get("cache_dtype"),
            "hf_overrides": bool(d.get("hf_overrides")),
            "model_runner": (w.get("model_runner_class") or "").rsplit(".", 2)[-2:][0],
            "cuda_total": total,
            "context_bytes": (total - pr["pre_dist_free"]) if total and pr.get("pre_dist_free") else None,
            "dist_init_bytes": (pr["pre_dist_free"] - pr["post_dist_free"]) if pr.get("post_dist_free") else None,
            "dist_init_torch_reserved": pr.get("post_dist_torch_reserved"),
            "pre_snapshot_held": w.get("init_snapshot_cuda_memory"),
            "init_free": w.get("init_snapshot_free_memory"),
            "requested": w.get("requested_memory"),
            "weights": w.get("model_memory_usage"),
            "param_bytes": w.get("param_bytes"),
            "activation": w.get("peak_activation_memory"),
            "non_torch": w.get("non_torch_memory"),
            "graphs": pr.get("graph_capture_bytes"),
            "graph_estimate_subtracted": w.get("cudagraph_memory_estimate"),
            "kv_bytes": w.get("available_kv_cache_memory_bytes"),
            "profile_reserved_peak_increase": (
                pr["post_profile_torch_peak_reserved"] - pr["pre_profile_torch_reserved"]
            )
            if pr.get("post_profile_torch_peak_reserved") is not None
            else None,
            "warmup_free_drop": (pr["pre_warmup_free"] - pr["post_warmup_free"])
            if pr.get("post_warmup_free")
            else None,
            "warmup_s": pr.get("warmup_s"),
            "used_after_ready": (total - w["mem_get_info_free"]) if total and w.get("mem_get_info_free") else None,
            "free_after_ready": w.get("mem_get_info_free"),
            "torch_reserved_after_ready": w.get("torch_reserved"),
            "torch_allocated_after_ready": w.get("torch_allocated"),
            "num_gpu_blocks": eng.get("num_gpu_blocks"),
            "kv_tokens": lg.get("kv_tokens"),
            "max_concurrency": lg.get("max_concurrency"),
            "llm_init_s": ch.get("llm_init_s"),
            "import_s": ch.get("import_s"),
            "proc_start_to_ready_s": ch.get("proc_start_to_ready_s"),
            "torch_compile_s": lg.get("torch_compile_s"),
            "graph_capture_s": lg.get("graph_capture_s"),
            "init_engine_s": lg.get("init_engine_s"),
        }
        ab = [x for x in (ch.get("workers_after_bench") or []) if x.get("rank") == w.get("rank")]
        if ab:
            a = ab[0]
            row["free_after_bench"] = a.get("now_free")
            row["torch_reserved_after_bench"] = a.get("now_torch_reserved")
            row["torch_peak_allocated_bench"] = a.get("now_torch_peak_allocated")
        for k, v in tp.items():
            if k.startswith("decode_b"):
                row[k + "_tok_s"] = v.get("out_tok_per_s")
            elif k.startswith("prefill_"):
                row["prefill_tok_s"] = v.get("prefill_tok_per_s")
        if tp.get("error"):
            row["bench_error"] = tp["error"]
        rows.append(row)
    return rows


def plan_for(d: dict) -> dict | None:
    """qwdeploy's plan for the case's settings on 2 x H200 (datasheet total, as `plan --gpu H200`)."""
    sys.path.insert(0, str(ROOT))
    from qwdeploy.cli import make_plan

    eng = (d.get("child") or {}).get("engine") or {}
    prof = d.get("profile") or "chat"
    kv = d.get("kv_cache_dtype", "auto")
    p = make_plan(
        d["repo_id"],
        None,
        prof,
        "H200",
        2,
        2,
        d["max_model_len"],
        eng.get("gpu_memory_utilization") or d["gpu_memory_utilization"],
        None if kv == "auto" else kv,
        d["max_num_seqs"],
        d["max_num_batched_tokens"],
        False,
    )
    j = p.to_json()
    m = j["memory_per_gpu"]
    ceiling = next((c["reason"] for c in j["choices"] if c["key"] == "gpu_memory_utilization"), None)
    return {
        "total": m["total_bytes"],
        "requested": m["requested_bytes"],
        "weights": m["weights_bytes"],
        "activation": m["activation_bytes"],
        "non_torch": m["non_torch_bytes"],
        "graphs": m["cudagraph_bytes"],
        "kv_bytes": m["kv_cache_bytes"],
        "kv_tokens": j["kv_cache_tokens"],
        "num_gpu_blocks": j["num_gpu_blocks"],
        "cuda_context": m.get("cuda_context_bytes"),
        "gmu_reason": ceiling,
        "decode_b1": (j.get("performance") or {}).get("predicted_decode_tokens_per_s_batch1"),
        "decode_conc": (j.get("performance") or {}).get("predicted_decode_tokens_per_s_concurrent"),
        "prefill": (j.get("performance") or {}).get("predicted_prefill_tokens_per_s"),
        "start_s": (j.get("performance") or {}).get("predicted_cold_start_s"),
    }


def g(b):
    return "–" if b is None else f"{b / GiB:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--no-plan", action="store_true")
    a = ap.parse_args()
    cases = []
    for f in sorted(glob.glob(os.path.join(a.dir, "raw", "t*.json"))):
        d = json.load(open(f))
        rows = rank_rows(d)
        plan = None
        if not a.no_plan:
            try:
                plan = plan_for(d)
            except Exception as e:  # noqa: BLE001
                plan = {"error": repr(e)[:300]}
        cases.append(
            {"case": d["name"], "ok": d.get("ok"), "ranks": rows, "plan": plan, "gmu_auto": d.get("gmu_auto_result")}
        )
    with open(os.path.join(a.dir, "summary.json"), "w") as f:
        json.dump(cases, f, indent=1)
    print(
        "| case | rank | W | act | non-torch | graphs | pre-snapshot held | init free | KV bytes | blocks | KV tokens | used after ready |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        for r in c["ranks"]:
            print(
                f"| {c['case']} | {r['rank']} | {r['weights']:,} | {r['activation']:,} | {r['non_torch']:,} | "
                f"{(r['graphs'] or 0):,} | {r['pre_snapshot_held']:,} | {r['init_free']:,} | {r['kv_bytes']:,} | "
                f"{r['num_gpu_blocks']:,} | {r['kv_tokens']:,} | {r['used_after_ready']:,} |"
            )
    print()
    print("| case | W GiB meas / plan | act | non-torch | graphs | KV GiB | KV tokens meas / plan (diff) |")
    print("|---|---|---|---|---|---|---|")
    for c in cases:
        r, p = c["ranks"][0], c["plan"] or {}
        if "error" in p or not p:
            continue
        diff = (p["kv_tokens"] - r["kv_tokens"]) / r["kv_tokens"] * 100
        print(
            f"| {c['case']} | {g(r['weights'])} / {g(p['weights'])} | {g(r['activation'])} / {g(p['activation'])} | "
            f"{g(r['non_torch'])} / {g(p['non_torch'])} | {g(r['graphs'])} / {g(p['graphs'])} | "
            f"{g(r['kv_bytes'])} / {g(p['kv_bytes'])} | {r['kv_tokens']:,} / {p['kv_tokens']:,} ({diff:+.2f} %) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
