#!/usr/bin/env python3
"""Run vLLM start-up / throughput cases on the lent GPU, one fresh process per case.

Runs ON the device machine (vLLM 0.26.0 carried there, see /work/shared/device/README.md).

    python3 run_vllm.py orchestrate --cases cases.json --configs <dir of <org>--<repo>.json> \
        --out /root/results [--only NAME,NAME]

For every case a child process (`run_vllm.py child ...`) is started.  The child imports vLLM and then
waits on stdin for a "go" line; the orchestrator pre-spawns the NEXT case's child while the current one
runs, so `import vllm` (~20 s) overlaps the current case.  A waiting child never touches CUDA (it only
imports), and it gets "go" only after the previous child has exited and the GPU memory is released,
because vLLM measures device-wide free memory while profiling.

Each case writes `<out>/raw/<name>.json` (settings, figures parsed from vLLM's log, engine/worker
values read back over collective_rpc, timings, throughput, error text) and `<out>/raw/<name>.log`
(vLLM's log with tqdm progress bars collapsed to their last state).

Timing fields:
  import_s                 `import vllm` (+ LLM, SamplingParams, TokensPrompt) in the child; it overlaps the
                           previous case, so CPU contention may inflate it a little
  llm_init_s               `LLM(**kwargs)` wall time, from "go" to ready
  proc_start_to_ready_s    import_s + llm_init_s + python start: what a fresh process would take
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GEN_CONFIG = {"bos_token_id": 151643, "eos_token_id": 151645}

# --------------------------------------------------------------------------------------------------
# helpers usable without vLLM


def smi_query() -> dict:
    """nvidia-smi memory of GPU 0 (flat keys, as at TP=1), of every GPU (`gpus`) and the compute
    processes (no CUDA context needed)."""
    out: dict = {}
    try:
        r = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=index,memory.used,memory.total,memory.reserved",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        gpus = []
        for line in r.stdout.strip().splitlines():
            p = [x.strip() for x in line.split(",")]
            if len(p) >= 3 and p[0].isdigit():
                g = {"index": int(p[0]), "used_MiB": int(p[1]), "total_MiB": int(p[2])}
                if len(p) > 3 and p[3].isdigit():
                    g["reserved_MiB"] = int(p[3])
                gpus.append(g)
        out["gpus"] = gpus
    except Exception as e:  # noqa: BLE001
        out["gpus_error"] = repr(e)
    try:
        r = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=memory.used,memory.total,memory.reserved",
                "--format=csv,noheader,nounits",
                "-i",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        parts = [p.strip() for p in r.stdout.strip().split(",")]
        out["smi_used_MiB"] = int(parts[0])
        out["smi_total_MiB"] = int(parts[1])
        if len(parts) > 2 and parts[2].isdigit():
            out["smi_reserved_MiB"] = int(parts[2])
    except Exception as e:  # noqa: BLE001
        out["smi_error"] = repr(e)
    try:
        r = subprocess.run(
            [
                "nvidia-smi",
                "--query-compute-apps=pid,process_name,used_memory,gpu_bus_id",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        apps = []
        for line in r.stdout.strip().splitlines():
            p = [x.strip() for x in line.split(",")]
            if len(p) >= 3:
                a = {"pid": p[0], "name": p[1], "used_MiB": p[2]}
                if len(p) > 3:
                    a["gpu_bus_id"] = p[3]
                apps.append(a)
        out["compute_apps"] = apps
    except Exception as e:  # noqa: BLE001
        out["compute_apps_error"] = repr(e)
    return out


_BAR = re.compile(r"(\d+)%\|[^|]*\|\s*\d+/\d+ \[")


def strip_progress(text: str) -> str:
    """Collapse tqdm progress bars (carriage-return rewrites) to their final state."""
    lines: list = []
    for line in text.split("\n"):
        if "\r" in line:
            segs = [s for s in line.split("\r") if s.strip()]
            line = segs[-1] if segs else ""
        m = _BAR.search(line)
        if m and m.group(1) != "100":
            continue
        if m and lines and lines[-1] == line:
            continue
        lines.append(line)
    return "\n".join(lines)


_F = r"([0-9]+(?:\.[0-9]+)?)"
PATTERNS = {
    "using_max_model_len": (r"Using max model len (\d+)", int),
    "chunked_prefill_mnbt": (r"Chunked prefill is enabled with max_num_batched_tokens=(\d+)", int),
    "model_loading_GiB": (r"Model loading took " + _F + r" GiB", float),
    "model_loading_s": (r"Model loading took [0-9.]+ GiB(?: memory)? and " + _F + r" seconds", float),
    "available_kv_GiB": (r"Available KV cache memory: " + _F + r" GiB", float),
    "kv_tokens": (r"GPU KV cache size: ([\d,]+) tokens", lambda s: int(s.replace(",", ""))),
    "max_concurrency": (r"Maximum concurrency for [\d,]+ tokens per request: " + _F + r"x", float),
    "max_concurrency_mml": (r"Maximum concurrency for ([\d,]+) tokens per request", lambda s: int(s.replace(",", ""))),
    "graph_capture_s": (r"Graph capturing finished in " + _F + r" secs", float),
    "graph_capture_GiB": (r"Graph capturing finished in [0-9.]+ secs, took " + _F + r" GiB", float),
    "torch_compile_s": (r"torch\.compile took " + _F + r" s in total", float),
    "dynamo_transform_s": (r"Dynamo bytecode transform time: " + _F + r" s", float),
    "init_engine_s": (r"init engine \(profile, create kv cache, warmup model\) took " + _F + " s", float),
    "init_engine_compilation_s": (
        r"init engine \(profile, create kv cache, warmup model\) took [0-9.]+ s "
        r"\(compilation: " + _F + " s",
        float,
    ),
    "estimated_cudagraph_GiB": (r"Estimated CUDA graph memory: " + _F + r" GiB total", float),
    "initial_profiling_s": (r"Initial profiling/warmup run took " + _F + " s", float),
    "attention_backend": (r"Using (\S+) attention backend", str),
    "model_runner": (r"Using (V\d) Model Runner", str),
    "estimated_max_model_len": (r"the estimated maximum model length is (\d+)", int),
    "refused_needed_GiB": (r"\(" + _F + r" GiB KV cache is needed", float),
    "refused_available_GiB": (r"larger than the available KV cache memory \(" + _F + r" GiB\)", float),
}
ACTUAL_USAGE = re.compile(
    r"Free memory on device \(" + _F + "/" + _F + r" GiB\) on startup\. Desired GPU memory utilization is "
    r"\("
    + _F
    + ", "
    + _F
    + r" GiB\)\. Actual usage is "
    + _F
    + r" GiB for weight, "
    + _F
    + r" GiB for peak activation, "
    + _F
    + r" GiB for non-torch memory, and "
    + _F
    + r" GiB for CUDAGraph memory\. Replace gpu_memory_utilization config with `--kv-cache-memory=(\d+)` "
    r"\("
    + _F
    + r" GiB\) to fit into requested memory, or `--kv-cache-memory=(\d+)` \("
    + _F
    + r" GiB\) to fully utilize gpu memory\. Current kv cache memory in use is "
    + _F
    + " GiB"
)
ACTUAL_KEYS = [
    "startup_free_GiB",
    "startup_total_GiB",
    "gmu_logged",
    "requested_GiB",
    "weights_GiB",
    "peak_activation_GiB",
    "non_torch_GiB",
    "cudagraph_GiB",
    "kv_mem_to_requested_bytes",
    "kv_mem_to_requested_GiB",
    "kv_mem_to_gpu_bytes",
    "kv_mem_to_gpu_GiB",
    "kv_in_use_GiB",
]
INTERESTING = re.compile(
    r"(DeepGEMM|deep_gemm|DeepGemm|CUTLASS|Cutlass|Marlin|marlin|AWQ|awq_marlin|Fp8|FP8|fp8|MoE|moe|"
    r"quantization|Triton|kernel|backend|cache directory|Directly load|from the cache|AOT|WARNING|"
    r"Error|ERROR)"
)


def parse_log(text: str) -> dict:
    res: dict = {}
    text = "\n".join(ln for ln in text.split("\n") if not ln.startswith("RESULT "))
    for key, (pat, conv) in PATTERNS.items():
        m = re.findall(pat, text)
        if m:
            try:
                res[key] = conv(m[-1])
            except ValueError:
                res[key] = m[-1]
    m = ACTUAL_USAGE.findall(text)
    if m:
        vals = m[-1]
        for k, v in zip(ACTUAL_KEYS, vals):
            res[k] = int(v) if k.endswith("_bytes") else float(v)
    errs = re.findall(
        r"(?:ValueError|RuntimeError|AssertionError|NotImplementedError|TypeError|"
        r"torch\.OutOfMemoryError|KeyError|ImportError|AttributeError)[^\n]*",
        text,
    )
    if errs:
        # keep unique, in order, the last few
        seen, uniq = set(), []
        for e in errs:
            e = re.sub(r"^\(EngineCore[^)]*\)\s*", "", e)
            if e not in seen:
                seen.add(e)
                uniq.append(e)
        res["error_lines"] = uniq[-6:]
    res["warm_compile_cache"] = bool(
        re.search(r"Directly load (?:the compiled graph|AOT compilation)|from the cache", text)
    )
    notes = []
    for line in text.split("\n"):
        if INTERESTING.search(line) and "Traceback" not in line and len(notes) < 60:
            line = re.sub(r"^\(EngineCore[^)]*\)\s*", "", line)
            notes.append(line[:400])
    res["notable_lines"] = notes
    ranks = parse_log_ranks(text)
    if ranks:
        res["per_rank"] = ranks
    return res


_RANK_PREFIX = re.compile(r"^\((Worker[^ )]*) pid=(\d+)\) ")
RANK_KEYS = (
    "model_loading_GiB",
    "model_loading_s",
    "available_kv_GiB",
    "graph_capture_s",
    "graph_capture_GiB",
    "torch_compile_s",
    "dynamo_transform_s",
    "initial_profiling_s",
    "estimated_cudagraph_GiB",
)


def parse_log_ranks(text: str) -> dict:
    """The per-worker figures of a TP>1 log: lines prefixed "(Worker_TP<r> pid=N) " (the early
    ones "(Worker_<r> pid=N) ", before the worker knows its TP rank) grouped by pid."""
    by_pid: dict = {}
    names: dict = {}
    for line in text.split("\n"):
        m = _RANK_PREFIX.match(line)
        if not m:
            continue
        by_pid.setdefault(m.group(2), []).append(line[m.end() :])
        if "_TP" in m.group(1) or m.group(2) not in names:
            names[m.group(2)] = m.group(1)
    out: dict = {}
    for pid, lines in by_pid.items():
        t = "\n".join(lines)
        r: dict = {"pid": int(pid)}
        for key in RANK_KEYS:
            pat, conv = PATTERNS[key]
            m = re.findall(pat, t)
            if m:
                try:
                    r[key] = conv(m[-1])
                except ValueError:
                    r[key] = m[-1]
        m = ACTUAL_USAGE.findall(t)
        if m:
            for k, v in zip(ACTUAL_KEYS, m[-1]):
                r[k] = int(v) if k.endswith("_bytes") else float(v)
        m = re.findall(r"Using (\[[^\]]*\]) all-reduce backends", t)
        if m:
            r["all_reduce_backends"] = m[-1]
        if len(r) > 1:
            out[names[pid]] = r
    return out


# --------------------------------------------------------------------------------------------------
# child


def _mem_now(tag: str) -> dict:
    """cudaMemGetInfo and the torch allocator's counters of the current device, as {tag_*: bytes}."""
    import torch

    d: dict = {}
    try:
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        d[tag + "_free"] = int(free)
        d[tag + "_total"] = int(total)
        d[tag + "_torch_allocated"] = int(torch.cuda.memory_allocated())
        d[tag + "_torch_reserved"] = int(torch.cuda.memory_reserved())
        d[tag + "_torch_peak_allocated"] = int(torch.cuda.max_memory_allocated())
        d[tag + "_torch_peak_reserved"] = int(torch.cuda.max_memory_reserved())
    except Exception as e:  # noqa: BLE001
        d[tag + "_error"] = repr(e)[:300]
    return d


def install_probes() -> dict:
    """Wrap three steps of vLLM's GPU worker so that each worker records (in the module dict
    `vllm.v1.worker.gpu_worker._QW_PROBE`, read back by `_worker_probe`):

      pre_dist_* / post_dist_*   cudaMemGetInfo right before and after
                                 init_worker_distributed_environment (NCCL communicators, custom
                                 all-reduce and symmetric-memory buffers), i.e. what the rank
                                 holds when Worker.init_device takes its init_snapshot
      graph_capture_bytes        the exact return value of model_runner.capture_model()
      pre_cowu_* / pre_warmup_* / post_warmup_*
                                 before compile_or_warm_up_model, before and after the kernel
                                 warm-up that follows graph capture (V2: warmup_kernels; torch
                                 peak counters reset right before it)
      pre_profile_* / post_profile_*  around determine_available_memory

    Installed in the child before LLM(): the engine and its workers are forked (CUDA is not
    initialised here), so they inherit the wrappers.  With a spawn start the wrappers are absent
    and the probe says so (`probe_patch_active` False)."""
    info: dict = {}
    try:
        import vllm.v1.worker.gpu_worker as gw
    except Exception as e:  # noqa: BLE001
        return {"error": repr(e)[:300]}
    if getattr(gw, "_QW_PROBE", None) is not None:
        return {"already": True}
    gw._QW_PROBE = {}
    rec = gw._QW_PROBE

    orig_dist = gw.init_worker_distributed_environment

    def dist_wrapper(*a, **k):
        rec.update(_mem_now("pre_dist"))
        r = orig_dist(*a, **k)
        rec.update(_mem_now("post_dist"))
        return r

    gw.init_worker_distributed_environment = dist_wrapper
    info["init_worker_distributed_environment"] = True

    if hasattr(gw, "warmup_kernels"):
        orig_wk = gw.warmup_kernels

        def wk_wrapper(*a, **k):
            import torch

            rec.update(_mem_now("pre_warmup"))
            try:
                torch.cuda.reset_peak_memory_stats()
            except Exception:  # noqa: BLE001
                pass
            t = time.time()
            r = orig_wk(*a, **k)
            rec["warmup_s"] = round(time.time() - t, 3)
            rec.update(_mem_now("post_warmup"))
            return r

        gw.warmup_kernels = wk_wrapper
        info["warmup_kernels"] = True

    W = gw.Worker
    orig_cowu = W.compile_or_warm_up_model

    def cowu_wrapper(self, *a, **k):
        rec.update(_mem_now("pre_cowu"))
        mr = self.model_runner
        orig_cap = mr.capture_model

        def cap(*ca, **ck):
            rec.update(_mem_now("pre_capture"))
            b = orig_cap(*ca, **ck)
            rec["graph_capture_bytes"] = int(b) if isinstance(b, (int, float)) else None
            rec.update(_mem_now("post_capture"))
            return b

        mr.capture_model = cap
        try:
            return orig_cowu(self, *a, **k)
        finally:
            rec.update(_mem_now("post_cowu"))
            try:
                del mr.capture_model
            except Exception:  # noqa: BLE001
                pass

    W.compile_or_warm_up_model = cowu_wrapper
    info["compile_or_warm_up_model"] = True

    orig_dam = W.determine_available_memory

    def dam_wrapper(self, *a, **k):
        rec.update(_mem_now("pre_profile"))
        r = orig_dam(self, *a, **k)
        rec.update(_mem_now("post_profile"))
        return r

    W.determine_available_memory = dam_wrapper
    info["determine_available_memory"] = True
    return info


def _comm_info(group) -> dict:
    """What a GroupCoordinator's device communicator holds (custom all-reduce, symmetric memory,
    PyNccl), with the byte sizes of the buffers vLLM allocated for them."""
    d: dict = {"world_size": getattr(group, "world_size", None), "unique_name": getattr(group, "unique_name", None)}
    dc = getattr(group, "device_communicator", None)
    if dc is None:
        d["device_communicator"] = None
        return d
    d["device_communicator"] = type(dc).__name__
    ca = getattr(dc, "ca_comm", None)
    if ca is not None:
        c = {"disabled": bool(getattr(ca, "disabled", True))}
        if not c["disabled"]:
            try:
                from vllm import _custom_ops as ops

                c["meta_size"] = int(ops.meta_size())
            except Exception as e:  # noqa: BLE001
                c["meta_size_error"] = repr(e)[:200]
            c["max_size"] = getattr(ca, "max_size", None)
            rd = getattr(ca, "rank_data", None)
            c["rank_data_bytes"] = int(rd.numel() * rd.element_size()) if rd is not None else None
            c["fully_connected"] = getattr(ca, "fully_connected", None)
        d["custom_allreduce"] = c
    else:
        d["custom_allreduce"] = None
    sm = getattr(dc, "symm_mem_comm", None)
    if sm is not None:
        b = getattr(sm, "buffer", None)
        d["symm_mem"] = {
            "disabled": bool(getattr(sm, "disabled", True)),
            "buffer_bytes": int(b.numel() * b.element_size()) if b is not None else None,
            "max_size": getattr(sm, "max_size", None),
        }
    else:
        d["symm_mem"] = None
    pn = getattr(dc, "pynccl_comm", None)
    d["pynccl"] = (
        None
        if pn is None
        else {"disabled": bool(getattr(pn, "disabled", True)), "nccl_version": getattr(pn, "nccl_version", None)}
    )
    for a in ("qr_comm", "fi_ar_comm", "aiter_ar_comm"):
        v = getattr(dc, a, None)
        d[a] = None if v is None else {"disabled": bool(getattr(v, "disabled", True))}
    d["all2all_manager"] = type(getattr(dc, "all2all_manager", None)).__name__
    return d


def _worker_probe_light(self):  # after the benchmark: what the rank holds now
    import sys as _s

    out = _mem_now("now")
    try:
        import torch

        st = torch.cuda.memory_stats()
        out["num_alloc_retries"] = int(st.get("num_alloc_retries", 0))
        out["num_ooms"] = int(st.get("num_ooms", 0))
    except Exception as e:  # noqa: BLE001
        out["stats_error"] = repr(e)[:200]
    out["rank"] = getattr(self, "rank", None)
    out["pid"] = os.getpid()
    gw = _s.modules.get("vllm.v1.worker.gpu_worker")
    out["probe"] = dict(getattr(gw, "_QW_PROBE", None) or {}) if gw is not None else None
    return out


def _worker_probe(self):  # runs inside the vLLM worker (EngineCore process) via collective_rpc
    import sys as _s

    import torch

    out = {}
    out["rank"] = getattr(self, "rank", None)
    out["local_rank"] = getattr(self, "local_rank", None)
    out["pid"] = os.getpid()
    try:
        out["device_index"] = int(torch.cuda.current_device())
        out["device_name"] = torch.cuda.get_device_name()
    except Exception as e:  # noqa: BLE001
        out["device_error"] = repr(e)[:200]
    gw = _s.modules.get("vllm.v1.worker.gpu_worker")
    pr = getattr(gw, "_QW_PROBE", None) if gw is not None else None
    out["probe_patch_active"] = pr is not None and bool(pr)
    out["probe"] = dict(pr or {})
    try:
        from vllm.distributed import parallel_state as ps

        groups = {}
        for name in ("_TP", "_PP", "_DP", "_EP", "_DCP", "_PCP", "_WORLD"):
            g = getattr(ps, name, None)
            if g is not None:
                groups[name.strip("_").lower()] = _comm_info(g)
        out["groups"] = groups
    except Exception as e:  # noqa: BLE001
        out["groups_error"] = repr(e)[:300]
    try:
        st = torch.cuda.memory_stats()
        out["torch_stats"] = {
            k: int(st.get(k, 0))
            for k in (
                "allocated_bytes.all.current",
                "allocated_bytes.all.peak",
                "reserved_bytes.all.current",
                "reserved_bytes.all.peak",
                "num_alloc_retries",
                "num_ooms",
                "num_device_alloc",
                "num_device_free",
            )
        }
    except Exception as e:  # noqa: BLE001
        out["torch_stats_error"] = repr(e)[:200]
    for a in (
        "requested_memory",
        "peak_activation_memory",
        "non_torch_memory",
        "cudagraph_memory_estimate",
        "available_kv_cache_memory_bytes",
    ):
        v = getattr(self, a, None)
        out[a] = int(v) if isinstance(v, (int, float)) else None
    snap = getattr(self, "init_snapshot", None)
    if snap is not None:
        for a in ("free_memory", "total_memory", "cuda_memory", "torch_memory", "non_torch_memory", "torch_peak"):
            v = getattr(snap, a, None)
            out["init_snapshot_" + a] = int(v) if isinstance(v, (int, float)) else None
    mr = getattr(self, "model_runner", None)
    if mr is not None:
        v = getattr(mr, "model_memory_usage", None)
        out["model_memory_usage"] = int(v) if isinstance(v, (int, float)) else None
        out["model_runner_class"] = type(mr).__module__ + "." + type(mr).__name__
        try:
            model = mr.get_model() if hasattr(mr, "get_model") else getattr(mr, "model", None)
            if model is not None:
                n_bytes = 0
                n_params = 0
                for p in model.parameters():
                    n_bytes += p.numel() * p.element_size()
                    n_params += p.numel()
                n_buf = sum(b.numel() * b.element_size() for b in model.buffers())
                out["param_bytes"] = int(n_bytes)
                out["param_count"] = int(n_params)
                out["buffer_bytes"] = int(n_buf)
        except Exception as e:  # noqa: BLE001
            out["param_error"] = repr(e)
    try:
        free, total = torch.cuda.mem_get_info()
        out["mem_get_info_free"] = int(free)
        out["mem_get_info_total"] = int(total)
        out["torch_allocated"] = int(torch.cuda.memory_allocated())
        out["torch_reserved"] = int(torch.cuda.memory_reserved())
    except Exception as e:  # noqa: BLE001
        out["mem_error"] = repr(e)
    return out


def child_main(args) -> int:
    t_start = time.time()
    case = json.loads(args.case_json)
    result: dict = {"name": case["name"], "child_pid": os.getpid()}
    res_path = args.result
    # Respect a "proc start" stamp from the orchestrator for wall-clock bookkeeping.
    t0 = time.time()
    import torch  # noqa: F401  (torch import is part of import cost; does not create a CUDA context)
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    result["import_s"] = round(time.time() - t0, 2)
    result["python_start_to_imported_s"] = round(time.time() - t_start, 2)
    result["vllm_version"] = vllm.__version__
    result["torch_version"] = torch.__version__
    if os.environ.get("QW_NO_PROBES") != "1":
        result["probes_installed"] = install_probes()
    result["cuda_initialized_after_import"] = bool(torch.cuda.is_initialized())
    print("WAITING_FOR_GO", flush=True)
    line = sys.stdin.readline()
    go = json.loads(line) if line.strip() else {}
    os.environ.update({k: str(v) for k, v in go.get("env", {}).items()})
    result["env_at_go"] = {
        k: os.environ.get(k) for k in sorted(os.environ) if k.startswith(("VLLM_", "DG_", "CUDA_", "PYTORCH_", "TORCH"))
    }
    t_go = time.time()
    kwargs = dict(case["llm_kwargs"])
    if go.get("kwargs"):
        kwargs.update(go["kwargs"])
        result["kwargs_at_go"] = go["kwargs"]
    print("=== GO", case["name"], time.strftime("%H:%M:%S"), flush=True)
    print("LLM kwargs:", json.dumps(kwargs), flush=True)

    def dump():
        tmp = res_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1, default=str)
        os.replace(tmp, res_path)

    try:
        llm = LLM(**kwargs)
    except BaseException as e:  # noqa: BLE001
        result["init_error"] = f"{type(e).__name__}: {e}"[:4000]
        result["init_fail_s"] = round(time.time() - t_go, 2)
        dump()
        print("RESULT", json.dumps(result, default=str), flush=True)
        sys.stdout.flush()
        os._exit(3)
    result["llm_init_s"] = round(time.time() - t_go, 2)
    result["proc_start_to_ready_s"] = round(result["python_start_to_imported_s"] + result["llm_init_s"], 2)
    result.update({("after_init_" + k): v for k, v in smi_query().items()})
    # engine-side values
    try:
        cfg = llm.llm_engine.vllm_config
        cc, sc, mc, comp = cfg.cache_config, cfg.scheduler_config, cfg.model_config, cfg.compilation_config
        result["engine"] = {
            "num_gpu_blocks": cc.num_gpu_blocks,
            "block_size": cc.block_size,
            "cache_dtype": str(cc.cache_dtype),
            "enable_prefix_caching": cc.enable_prefix_caching,
            "gpu_memory_utilization": cc.gpu_memory_utilization,
            "max_num_seqs": sc.max_num_seqs,
            "max_num_batched_tokens": sc.max_num_batched_tokens,
            "async_scheduling": getattr(sc, "async_scheduling", None),
            "max_model_len": mc.max_model_len,
            "dtype": str(mc.dtype),
            "quantization": mc.quantization,
            "enforce_eager": mc.enforce_eager,
            "cudagraph_mode": str(comp.cudagraph_mode),
            "cudagraph_capture_sizes": list(comp.cudagraph_capture_sizes or []),
            "max_cudagraph_capture_size": comp.max_cudagraph_capture_size,
        }
    except Exception as e:  # noqa: BLE001
        result["engine_error"] = repr(e)
    try:
        w = llm.collective_rpc(_worker_probe, timeout=30)
        result["workers"] = list(w) if w else []
        result["worker"] = w[0] if w else None
    except Exception as e:  # noqa: BLE001
        result["worker_error"] = repr(e)[:1000]
    dump()

    bench = case.get("bench") or {}
    if bench:
        import random

        rng = random.Random(1234)

        def prompts(n, length):
            return [
                TokensPrompt(prompt_token_ids=[rng.randrange(1000, 150000) for _ in range(length)]) for _ in range(n)
            ]

        def sp(max_tokens):
            return SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0, detokenize=False)

        def timed(ps, max_tokens):
            t = time.time()
            outs = llm.generate(ps, sp(max_tokens), use_tqdm=False)
            s = time.time() - t
            n_out = sum(len(o.outputs[0].token_ids) for o in outs)
            n_in = sum(len(o.prompt_token_ids) for o in outs)
            return s, n_out, n_in

        tp: dict = {
            "note": "random prompt ids (distinct per request, no prefix-cache hits), "
            "ignore_eos, temperature 0, detokenize False, warm-up generate first"
        }
        try:
            in_len = int(bench.get("in_len", 128))
            out_len = int(bench.get("out_len", 256))
            for b in bench.get("decode_batches", []):
                timed(prompts(b, in_len), 16)  # warm-up
                s, n_out, n_in = timed(prompts(b, in_len), out_len)
                tp[f"decode_b{b}"] = {
                    "batch": b,
                    "in_len": in_len,
                    "out_len": out_len,
                    "s": round(s, 3),
                    "out_tokens": n_out,
                    "out_tok_per_s": round(n_out / s, 1),
                    "per_seq_tok_per_s": round(n_out / s / b, 2),
                }
                result["throughput"] = tp
                dump()
            pf = bench.get("prefill")
            if pf:
                n, length = int(pf[0]), int(pf[1])
                timed(prompts(n, length), 1)  # warm-up
                s, n_out, n_in = timed(prompts(n, length), 1)
                tp[f"prefill_{n}x{length}"] = {
                    "requests": n,
                    "in_len": length,
                    "max_tokens": 1,
                    "s": round(s, 3),
                    "in_tokens": n_in,
                    "prefill_tok_per_s": round(n_in / s, 1),
                }
            result.update({("after_bench_" + k): v for k, v in smi_query().items() if k in ("smi_used_MiB", "gpus")})
        except Exception as e:  # noqa: BLE001
            tp["error"] = f"{type(e).__name__}: {e}"[:2000]
        result["throughput"] = tp
        try:
            result["workers_after_bench"] = list(llm.collective_rpc(_worker_probe_light, timeout=30))
        except Exception as e:  # noqa: BLE001
            result["workers_after_bench_error"] = repr(e)[:500]
    result["child_total_s"] = round(time.time() - t_start, 2)
    dump()
    print("RESULT", json.dumps(result, default=str), flush=True)
    sys.stdout.flush()
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001
        pass
    os._exit(0)


# --------------------------------------------------------------------------------------------------
# orchestrator


def prepare_model_dir(configs_dir: str, models_root: str, repo_id: str) -> str:
    fname = repo_id.replace("/", "--") + ".json"
    d = os.path.join(models_root, repo_id.replace("/", "--"))
    os.makedirs(d, exist_ok=True)
    shutil.copyfile(os.path.join(configs_dir, fname), os.path.join(d, "config.json"))
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump(GEN_CONFIG, f)
    return d


def build_llm_kwargs(case: dict, model_dir: str) -> dict:
    kw = {
        "model": model_dir,
        "load_format": "dummy",
        "skip_tokenizer_init": True,
        "seed": 0,
        "tensor_parallel_size": int(case.get("tensor_parallel_size", 1)),
        "max_model_len": case["max_model_len"],
        "gpu_memory_utilization": case["gpu_memory_utilization"],
        "max_num_seqs": case["max_num_seqs"],
        "max_num_batched_tokens": case["max_num_batched_tokens"],
        "kv_cache_dtype": case.get("kv_cache_dtype", "auto"),
        "enforce_eager": bool(case.get("enforce_eager", False)),
    }
    if case.get("hf_overrides"):
        kw["hf_overrides"] = case["hf_overrides"]
    kw.update(case.get("extra_llm_kwargs") or {})
    return kw


class Child:
    def __init__(self, case: dict, out_raw: str, env: dict):
        self.case = case
        self.name = case["name"]
        self.rawlog_path = os.path.join(out_raw, self.name + ".rawlog")
        self.result_path = os.path.join(out_raw, self.name + ".child.json")
        self.logf = open(self.rawlog_path, "w")
        spec = json.dumps({k: v for k, v in case.items() if k != "llm_kwargs"})
        self.logf.write(f"=== {self.name} spawned {time.strftime('%Y-%m-%d %H:%M:%S')} spec={spec}\n")
        self.logf.flush()
        self.t_spawn = time.time()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "child",
                "--case-json",
                json.dumps(case),
                "--result",
                self.result_path,
            ],
            stdin=subprocess.PIPE,
            stdout=self.logf,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            text=True,
        )

    def go(self, env_over: dict, kwargs_over: dict | None = None):
        self.t_go = time.time()
        try:
            self.proc.stdin.write(json.dumps({"env": env_over, "kwargs": kwargs_over or {}}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            self.logf.write(f"=== go failed: {e!r}\n")

    def kill(self):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=15)
                # make sure the whole group (EngineCore) is gone too
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_gpu_idle(max_s: float = 30.0, threshold_mib: int = 1024) -> dict:
    t = time.time()
    last: dict = {}
    while time.time() - t < max_s:
        last = smi_query()
        used = [g.get("used_MiB", 0) for g in last.get("gpus", [])] or [last.get("smi_used_MiB", 0)]
        if max(used) < threshold_mib:
            break
        time.sleep(1.0)
    last["waited_s"] = round(time.time() - t, 1)
    return last


NVLS_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def rank_summary(ch: dict) -> str:
    """One short line per rank: init free, pre-snapshot held, graph bytes, KV bytes (MiB)."""
    parts = []
    for w in ch.get("workers") or []:
        if not isinstance(w, dict):
            continue
        pr = w.get("probe") or {}
        tot = w.get("init_snapshot_total_memory") or 0
        free = w.get("init_snapshot_free_memory") or 0
        mib = lambda b: None if b is None else round(b / 2**20)  # noqa: E731
        parts.append(
            f"r{w.get('rank')}:free0={mib(free)} held={mib(tot - free) if tot else None} "
            f"G={mib(pr.get('graph_capture_bytes'))} KV={mib(w.get('available_kv_cache_memory_bytes'))} "
            f"after={mib(tot - w['mem_get_info_free']) if tot and w.get('mem_get_info_free') else None}"
        )
    return ";".join(parts)


def max_gmu_from(spec: dict, out_raw: str) -> dict:
    """The highest gpu_memory_utilization the ranks of an earlier case leave room for.

    Per rank r of case spec["from"] (same model and settings, lower gmu):
      init_free_r   cudaMemGetInfo free at vLLM's init snapshot (everything the rank already holds
                    -- CUDA context, NCCL, custom all-reduce -- is outside it)
      G_r           CUDA-graph pool (capture_model's exact return value; on top of the budget in
                    vLLM 0.26's V2 runner)
      X_r           what the post-capture kernel warm-up took from the device beyond the activation
                    room the budget already reserves: max(0, warm-up free-memory drop - peak activation)
    gmu = floor_4dp(min_r(init_free_r - G_r - X_r - margin) / total)
    """
    import math

    res: dict = {"from": spec.get("from"), "margin_bytes": int(spec.get("margin_mib", 256)) * 2**20}
    try:
        with open(os.path.join(out_raw, spec["from"] + ".json")) as f:
            src = json.load(f)
        workers = (src.get("child") or {}).get("workers") or []
        per = []
        for w in workers:
            pr = w.get("probe") or {}
            total = int(w["init_snapshot_total_memory"])
            free0 = int(w["init_snapshot_free_memory"])
            g = pr.get("graph_capture_bytes")
            if g is None:
                rk = [v for k, v in ((src.get("log") or {}).get("per_rank") or {}).items()]
                g = int(max(r.get("cudagraph_GiB", 0) for r in rk) * 2**30) if rk else 0
            warm = 0
            if pr.get("pre_warmup_free") is not None and pr.get("post_warmup_free") is not None:
                warm = max(0, int(pr["pre_warmup_free"]) - int(pr["post_warmup_free"]))
            act = int(w.get("peak_activation_memory") or 0)
            x = max(0, warm - act)
            room = free0 - int(g) - x - res["margin_bytes"]
            per.append(
                {
                    "rank": w.get("rank"),
                    "total": total,
                    "init_free": free0,
                    "graph": int(g),
                    "warmup_drop": warm,
                    "peak_activation": act,
                    "warmup_excess": x,
                    "room": room,
                    "gmu": math.floor(room / total * 1e4) / 1e4,
                }
            )
        res["per_rank"] = per
        if per:
            gmu = min(p["gmu"] for p in per)
            lo, hi = spec.get("min", 0.5), spec.get("max", 0.999)
            res["gpu_memory_utilization"] = max(lo, min(hi, gmu))
    except Exception as e:  # noqa: BLE001
        res["error"] = repr(e)[:500]
        if spec.get("fallback"):
            res["gpu_memory_utilization"] = spec["fallback"]
    return res


def orchestrate(args) -> int:
    with open(args.cases) as f:
        cases = json.load(f)
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if c["name"] in keep]
    out_raw = os.path.join(args.out, "raw")
    os.makedirs(out_raw, exist_ok=True)
    models_root = args.models
    for c in cases:
        d = prepare_model_dir(args.configs, models_root, c["repo_id"])
        c["llm_kwargs"] = build_llm_kwargs(c, d)
    base_env = dict(os.environ)
    base_env["PYTHONUNBUFFERED"] = "1"
    base_env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # for collective_rpc(callable) read-back only
    # NVLink multicast must stay off on the shared multi-GPU machines, in every process.
    base_env.update(NVLS_OFF)
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cases": [c["name"] for c in cases],
        "smi_at_start": smi_query(),
    }
    try:
        meta["nvidia_smi_L"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        meta["nvidia_smi_query"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,pci.bus_id", "--format=csv"],
            capture_output=True,
            text=True,
        ).stdout
    except Exception as e:  # noqa: BLE001
        meta["smi_error"] = repr(e)
    with open(os.path.join(args.out, args.meta_name), "w") as f:
        json.dump(meta, f, indent=1)
    progress = open(os.path.join(args.out, "progress.log"), "a")

    def note(msg):
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        progress.write(line + "\n")
        progress.flush()

    fp8_fallback = False
    pending = Child(cases[0], out_raw, base_env) if cases else None
    for i, case in enumerate(cases):
        child = pending
        idle = wait_gpu_idle()
        env_over = dict(case.get("env", {}))
        fallback_applied = False
        if case.get("is_fp8_weights") and fp8_fallback and case.get("fp8_fallback_env"):
            env_over.update(case["fp8_fallback_env"])
            fallback_applied = True
        kwargs_over = {}
        gmu_note = None
        if case.get("gmu_auto"):
            gmu_note = max_gmu_from(case["gmu_auto"], out_raw)
            if gmu_note.get("gpu_memory_utilization"):
                kwargs_over["gpu_memory_utilization"] = gmu_note["gpu_memory_utilization"]
            note(f"gmu_auto {case['name']}: {json.dumps(gmu_note)[:600]}")
        child.go(env_over, kwargs_over)
        note(
            f"GO {case['name']} (gpu used before {[g.get('used_MiB') for g in idle.get('gpus', [])]} MiB, "
            f"apps {idle.get('compute_apps')}) env={env_over} kwargs={kwargs_over}"
        )
        # pre-spawn the next case: it only imports vLLM, then blocks on stdin
        pending = Child(cases[i + 1], out_raw, base_env) if i + 1 < len(cases) else None
        timeout = float(case.get("timeout_s", args.timeout))
        timed_out = False
        try:
            rc = child.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            note(f"TIMEOUT {case['name']} after {timeout}s, killing")
            child.kill()
            rc = child.proc.returncode
        # the child os._exit()s after writing its result; make sure its group (EngineCore) is gone
        try:
            os.killpg(child.proc.pid, 0)
            time.sleep(3)
            child.kill()
        except (ProcessLookupError, PermissionError):
            pass
        wall_go_to_exit = round(time.time() - child.t_go, 2)
        child.logf.close()
        with open(child.rawlog_path, errors="replace", newline="") as f:
            raw = f.read()
        trimmed = strip_progress(raw)
        with open(os.path.join(out_raw, case["name"] + ".log"), "w") as f:
            f.write(trimmed)
        os.remove(child.rawlog_path)
        res = {k: v for k, v in case.items() if k not in ("llm_kwargs",)}
        res["llm_kwargs"] = case["llm_kwargs"]
        res["env_overrides"] = env_over
        res["kwargs_overrides"] = kwargs_over
        if gmu_note is not None:
            res["gmu_auto_result"] = gmu_note
            res["llm_kwargs"] = {**case["llm_kwargs"], **kwargs_over}
        res["fp8_fallback_applied"] = fallback_applied
        res["gpu_before_go"] = idle
        res["returncode"] = rc
        res["timed_out"] = timed_out
        res["wall_go_to_exit_s"] = wall_go_to_exit
        try:
            with open(child.result_path) as f:
                res["child"] = json.load(f)
            os.remove(child.result_path)
        except Exception as e:  # noqa: BLE001
            res["child"] = None
            res["child_result_error"] = repr(e)
        res["log"] = parse_log(trimmed)
        ch = res.get("child") or {}
        res["refused"] = bool(
            res["log"].get("estimated_max_model_len") is not None or "To serve at least one request" in trimmed
        )
        res["ok"] = ch.get("llm_init_s") is not None and not timed_out
        with open(os.path.join(out_raw, case["name"] + ".json"), "w") as f:
            json.dump(res, f, indent=1, default=str)
        if case.get("is_fp8_weights") and not fallback_applied:
            took = ch.get("llm_init_s") or wall_go_to_exit
            if timed_out or (took and took > float(case.get("fp8_slow_s", 240))):
                fp8_fallback = True
                note("FP8 start too slow -> later FP8 cases use their fp8_fallback_env")
        lg = res["log"]
        note(
            f"DONE {case['name']} rc={rc} ok={res['ok']} refused={res['refused']} timed_out={timed_out} "
            f"wall={wall_go_to_exit}s import={ch.get('import_s')} init={ch.get('llm_init_s')} "
            f"W={lg.get('weights_GiB')} A={lg.get('peak_activation_GiB')} N={lg.get('non_torch_GiB')} "
            f"C={lg.get('cudagraph_GiB')} KV={lg.get('available_kv_GiB')} tok={lg.get('kv_tokens')} "
            f"blocks={(ch.get('engine') or {}).get('num_gpu_blocks')} est={lg.get('estimated_max_model_len')} "
            f"ranks={rank_summary(ch)} "
            f"tp={json.dumps(ch.get('throughput', {}))[:300]} err={(lg.get('error_lines') or [''])[-1][:200]}"
        )
    if pending is not None:
        pending.kill()
    with open(os.path.join(args.out, args.done_file), "w") as f:
        f.write(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    note("ALL DONE")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("orchestrate")
    o.add_argument("--cases", required=True)
    o.add_argument("--configs", required=True)
    o.add_argument("--out", default="/root/results")
    o.add_argument("--models", default="/root/models")
    o.add_argument("--only", default="")
    o.add_argument("--timeout", type=float, default=420)
    o.add_argument("--done-file", default="DONE", help="file written in --out when all cases ran")
    o.add_argument("--meta-name", default="batch_meta.json")
    c = sub.add_parser("child")
    c.add_argument("--case-json", required=True)
    c.add_argument("--result", required=True)
    p = sub.add_parser("parse")
    p.add_argument("log")
    args = ap.parse_args()
    if args.cmd == "orchestrate":
        return orchestrate(args)
    if args.cmd == "child":
        return child_main(args)
    if args.cmd == "parse":
        with open(args.log, errors="replace", newline="") as f:
            print(json.dumps(parse_log(strip_progress(f.read())), indent=1))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
