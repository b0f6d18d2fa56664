#!/usr/bin/env python3
"""Which CUDA allocations outlive vLLM's model load beyond the parameters and buffers.

Runs ON the device: one in-process engine (eager, dummy weights), torch's allocation history on,
then groups every block still allocated after the load by the first vLLM frame that made it.
    python3 bench/gpu/probe_weights.py MODEL_DIR --max-model-len 32768 --out probe.json
"""

import argparse
import json
import os
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")


def _probe(self):  # runs in the worker (in this process)
    import torch

    snap = torch.cuda.memory._snapshot()
    runner = self.model_runner
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    owned = {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}
    groups: dict[str, dict] = {}
    for seg in snap["segments"]:
        for blk in seg["blocks"]:
            if blk["state"] != "active_allocated" or blk["size"] > 2**32:
                continue
            frames = blk.get("frames") or []
            where = next(
                (
                    f"{f['filename'].split('site-packages/')[-1]}:{f['line']} {f['name']}"
                    for f in frames
                    if "vllm" in f["filename"]
                ),
                "?",
            )
            g = groups.setdefault(where, {"bytes": 0, "blocks": 0, "param_or_buffer": 0})
            g["bytes"] += blk["size"]
            g["blocks"] += 1
            g["param_or_buffer"] += blk["address"] in owned
    info = {
        "model_memory_usage": int(runner.model_memory_usage),
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "buffer_bytes": sum(b.numel() * b.element_size() for b in model.buffers()),
    }
    return groups, info


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--max-model-len", type=int, default=32768)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import torch
    from vllm import LLM

    torch.cuda.memory._record_memory_history(max_entries=200000)
    t = time.time()
    llm = LLM(
        model=a.model,
        load_format="dummy",
        skip_tokenizer_init=True,
        enforce_eager=True,
        max_model_len=a.max_model_len,
        gpu_memory_utilization=0.5,
        max_num_seqs=16,
        max_num_batched_tokens=2048,
    )
    groups, info = llm.collective_rpc(_probe)[0]
    rows = sorted(groups.items(), key=lambda kv: -kv[1]["bytes"])
    out = {
        "model": a.model,
        "init_s": round(time.time() - t, 1),
        **info,
        "allocations_by_origin": [{"origin": k, **v} for k, v in rows[:60]],
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "allocations_by_origin"}))
    for r in out["allocations_by_origin"][:25]:
        print(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
