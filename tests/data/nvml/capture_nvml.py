#!/usr/bin/env python3
"""Record the answers of the pynvml calls `qwdeploy gpus` relies on, for replay by a thin fake.

Runs on a machine with an NVIDIA driver and nvidia-ml-py (pynvml).  Every call is stored as

    {"call": "nvmlDeviceGetName", "args": [{"handle": 0}], "result": "NVIDIA H100 80GB HBM3"}
    {"call": "nvmlDeviceGetMigMode", "args": [{"handle": 0}],
     "error": {"class": "NVMLError_NotSupported", "value": 3, "str": "Not Supported"}}

Device handles are written as {"handle": <index>}; NVML constants as {"const": "<NAME>", "value": int};
ctypes structs as dicts of their fields (bytes decoded as UTF-8); lists of structs as lists of dicts.
Keyword arguments are kept in "kwargs".  Beside the calls, the file holds `nvidia-smi -q`, `nvidia-smi
topo -m`, a csv query, torch.cuda.mem_get_info() (taken in a separate process so that this process holds
no CUDA context and does not show up in the process lists) and /proc/<pid>/comm of every GPU process.

    python3 capture_nvml.py --out h100_idle.json
    python3 capture_nvml.py --out h100_30pct_held.json --hold-fraction 0.30   # starts + stops a holder
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time


def to_jsonable(obj, depth=0):
    if depth > 6:
        return repr(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, ctypes.Array):
        return [to_jsonable(x, depth + 1) for x in obj]
    fields = getattr(obj, "_fields_", None)
    if fields is not None:
        d = {"__struct__": type(obj).__name__}
        for f in fields:
            name = f[0]
            try:
                d[name] = to_jsonable(getattr(obj, name), depth + 1)
            except Exception as e:  # noqa: BLE001
                d[name] = {"unreadable": repr(e)}
        return d
    if isinstance(obj, ctypes._SimpleCData):  # noqa: SLF001
        return to_jsonable(obj.value, depth + 1)
    if hasattr(obj, "__dict__"):
        # pynvml >= 12 returns nvmlFriendlyObject (plain attributes, no _fields_) e.g. for
        # nvmlDeviceGetComputeRunningProcesses; the 2026-11-25 captures predate this branch.
        d = {"__object__": type(obj).__name__}
        d.update({k: to_jsonable(v, depth + 1) for k, v in vars(obj).items() if not k.startswith("_")})
        return d
    return repr(obj)


class Recorder:
    def __init__(self, nv):
        self.nv = nv
        self.calls: list = []
        self.handles: dict = {}

    def _arg(self, a):
        for idx, h in self.handles.items():
            if a is h:
                return {"handle": idx}
        return to_jsonable(a)

    def call(self, name, *args, const_args=None, **kwargs):
        """Call pynvml.<name>(*args, **kwargs) and record the answer or the NVMLError."""
        rec: dict = {"call": name, "args": [self._arg(a) for a in args]}
        if const_args:
            # replace positional args by their constant names where given: {position: "NVML_..."}
            for pos, cname in const_args.items():
                rec["args"][pos] = {"const": cname, "value": to_jsonable(args[pos])}
        if kwargs:
            rec["kwargs"] = {k: (getattr(v, "__name__", None) or to_jsonable(v)) for k, v in kwargs.items()}
        fn = getattr(self.nv, name, None)
        if fn is None:
            rec["error"] = {"class": "MissingInPynvml", "value": None, "str": f"pynvml has no {name}"}
            self.calls.append(rec)
            return None
        try:
            res = fn(*args, **kwargs)
        except self.nv.NVMLError as e:
            rec["error"] = {"class": type(e).__name__, "value": getattr(e, "value", None), "str": str(e)}
            self.calls.append(rec)
            return None
        except Exception as e:  # noqa: BLE001  (TypeError for an unsupported kwarg, ...)
            rec["error"] = {"class": type(e).__name__, "value": None, "str": str(e), "python_error": True}
            self.calls.append(rec)
            return None
        rec["result"] = to_jsonable(res)
        self.calls.append(rec)
        return res


def run(cmd, timeout=60):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return r.stdout + (("\n[stderr]\n" + r.stderr) if r.stderr.strip() else "")
    except Exception as e:  # noqa: BLE001
        return f"[failed: {e!r}]"


def torch_mem_get_info():
    """cudaMemGetInfo of device 0 (top-level keys, as in the single-GPU captures) and, on a machine
    with several GPUs, of every device (`per_device`), each read in its own fresh process that
    creates a CUDA context on that device only (so free = total - that context - other users)."""
    code = (
        "import json,sys,torch;i=int(sys.argv[1]);torch.cuda.set_device(i);f,t=torch.cuda.mem_get_info(i);"
        "print(json.dumps({'index':i,'free_bytes':f,'total_bytes':t,'device_name':torch.cuda.get_device_name(i),"
        "'torch':torch.__version__,'device_count':torch.cuda.device_count(),"
        "'can_access_peer':{j:torch.cuda.can_device_access_peer(i,j) "
        "for j in range(torch.cuda.device_count()) if j!=i}}))"
    )

    def one(i):
        out = run([sys.executable, "-c", code, str(i)], timeout=120)
        try:
            return json.loads(out.strip().splitlines()[-1])
        except Exception:  # noqa: BLE001
            return {"index": i, "error": out[-2000:]}

    first = one(0)
    doc = {k: v for k, v in first.items() if k not in ("index", "can_access_peer")}
    n = first.get("device_count") or 1
    if n > 1:
        doc["per_device"] = [first] + [one(i) for i in range(1, n)]
    return doc


def capture(label: str) -> dict:
    import pynvml as nv

    doc: dict = {
        "label": label,
        "captured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "hostname": os.uname().nodename,
        "python": sys.version.split()[0],
    }
    try:
        from importlib.metadata import version

        doc["nvidia_ml_py_version"] = version("nvidia-ml-py")
    except Exception as e:  # noqa: BLE001
        doc["nvidia_ml_py_version"] = repr(e)
    r = Recorder(nv)
    r.call("nvmlInit")
    r.call("nvmlSystemGetDriverVersion")
    r.call("nvmlSystemGetCudaDriverVersion")
    r.call("nvmlSystemGetCudaDriverVersion_v2")
    r.call("nvmlSystemGetNVMLVersion")
    count = r.call("nvmlDeviceGetCount") or 0
    pids: set = set()
    for i in range(count):
        h = r.call("nvmlDeviceGetHandleByIndex", i)
        if h is None:
            continue
        r.handles[i] = h
        for name in (
            "nvmlDeviceGetName",
            "nvmlDeviceGetUUID",
            "nvmlDeviceGetPciInfo",
            "nvmlDeviceGetPciInfo_v3",
            "nvmlDeviceGetMemoryInfo",
        ):
            r.call(name, h)
        mv2 = getattr(nv, "nvmlMemory_v2", None)
        if mv2 is not None:
            r.call("nvmlDeviceGetMemoryInfo", h, version=mv2)
        else:
            r.calls.append(
                {
                    "call": "nvmlDeviceGetMemoryInfo",
                    "args": [{"handle": i}],
                    "kwargs": {"version": "nvmlMemory_v2"},
                    "error": {"class": "MissingInPynvml", "value": None, "str": "pynvml has no nvmlMemory_v2"},
                }
            )
        for name in (
            "nvmlDeviceGetCudaComputeCapability",
            "nvmlDeviceGetMigMode",
            "nvmlDeviceGetMaxMigDeviceCount",
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlDeviceGetGraphicsRunningProcesses",
            "nvmlDeviceGetPowerUsage",
            "nvmlDeviceGetEnforcedPowerLimit",
            "nvmlDeviceGetPersistenceMode",
            "nvmlDeviceGetMinorNumber",
            "nvmlDeviceGetBoardPartNumber",
            "nvmlDeviceGetBrand",
            "nvmlDeviceGetSerial",
            "nvmlDeviceGetIndex",
            "nvmlDeviceGetArchitecture",
            "nvmlDeviceGetNumGpuCores",
            "nvmlDeviceGetComputeMode",
            "nvmlDeviceGetCurrentClocksThrottleReasons",
            "nvmlDeviceGetUtilizationRates",
            "nvmlDeviceGetBAR1MemoryInfo",
            "nvmlDeviceGetVbiosVersion",
            "nvmlDeviceGetNumaNodeId",
        ):
            res = r.call(name, h)
            if name.endswith("RunningProcesses") and res:
                for p in res:
                    pid = getattr(p, "pid", None)
                    if pid is not None:
                        pids.add(int(pid))
        r.call("nvmlDeviceGetTemperature", h, nv.NVML_TEMPERATURE_GPU, const_args={1: "NVML_TEMPERATURE_GPU"})
        for clk, cname in (
            (getattr(nv, "NVML_CLOCK_SM", 1), "NVML_CLOCK_SM"),
            (getattr(nv, "NVML_CLOCK_MEM", 2), "NVML_CLOCK_MEM"),
        ):
            r.call("nvmlDeviceGetMaxClockInfo", h, clk, const_args={1: cname})
        for link in range(18):
            r.call("nvmlDeviceGetNvLinkState", h, link)
    for i in range(count):
        for j in range(count):
            hi, hj = r.handles.get(i), r.handles.get(j)
            if hi is None or hj is None:
                continue
            r.call("nvmlDeviceGetTopologyCommonAncestor", hi, hj)
            for cname in (
                "NVML_P2P_CAPS_INDEX_READ",
                "NVML_P2P_CAPS_INDEX_NVLINK",
                "NVML_P2P_CAPS_INDEX_WRITE",
                "NVML_P2P_CAPS_INDEX_ATOMICS",
            ):
                cval = getattr(nv, cname, None)
                if cval is None:
                    continue
                # nvidia-ml-py 13.x defines NVML_P2P_CAPS_INDEX_READ = 0, (a tuple): passing it raises
                # ctypes.ArgumentError. Record that call as is, then the call with the unwrapped int.
                r.call("nvmlDeviceGetP2PStatus", hi, hj, cval, const_args={2: cname})
                if isinstance(cval, tuple) and cval:
                    r.call("nvmlDeviceGetP2PStatus", hi, hj, cval[0], const_args={2: cname + "[0]"})
    r.call("nvmlShutdown")
    doc["calls"] = r.calls
    doc["constants"] = {
        k: getattr(nv, k)
        for k in dir(nv)
        if k.startswith(
            (
                "NVML_TOPOLOGY_",
                "NVML_P2P_STATUS_",
                "NVML_P2P_CAPS_INDEX_",
                "NVML_TEMPERATURE_GPU",
                "NVML_DEVICE_MIG_",
                "NVML_FEATURE_",
                "NVML_ERROR_",
                "NVML_SUCCESS",
            )
        )
        and isinstance(getattr(nv, k), int)
    }
    doc["process_names"] = {}
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError as e:
            comm = None
            doc["process_names"][str(pid)] = {"comm": None, "error": repr(e)}
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()[:300]
        except OSError:
            cmd = None
        doc["process_names"][str(pid)] = {"comm": comm, "cmdline": cmd}
    doc["nvidia_smi_query_csv"] = run(
        [
            "nvidia-smi",
            "--query-gpu=index,name,uuid,pci.bus_id,driver_version,memory.total,memory.used,"
            "memory.free,memory.reserved,compute_cap,mig.mode.current,persistence_mode,power.draw,temperature.gpu",
            "--format=csv",
        ]
    )
    doc["nvidia_smi_compute_apps_csv"] = run(
        ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory,gpu_uuid", "--format=csv"]
    )
    doc["torch_mem_get_info"] = torch_mem_get_info()
    return doc


HOLDER = r"""
import sys, time, torch
frac = float(sys.argv[1]); ready = sys.argv[2]
free, total = torch.cuda.mem_get_info()
n = int(total * frac)
x = torch.empty(n, dtype=torch.uint8, device='cuda')
x[::1 << 20].fill_(1)
torch.cuda.synchronize()
open(ready, 'w').write(f'{n} {total}\n')
time.sleep(900)
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="JSON path; nvidia-smi texts go beside it")
    ap.add_argument("--label", default=None)
    ap.add_argument(
        "--hold-fraction",
        type=float,
        default=0.0,
        help="start a torch process holding this fraction of total memory while capturing",
    )
    args = ap.parse_args()
    base = args.out[:-5] if args.out.endswith(".json") else args.out
    holder = None
    hold_info: dict = {}
    if args.hold_fraction > 0:
        ready = base + ".holder_ready"
        if os.path.exists(ready):
            os.remove(ready)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(args.hold_fraction), ready])
        t = time.time()
        while not os.path.exists(ready) and time.time() - t < 120 and holder.poll() is None:
            time.sleep(0.2)
        time.sleep(0.5)
        hold_info = {
            "holder_pid": holder.pid,
            "fraction": args.hold_fraction,
            "ready_after_s": round(time.time() - t, 1),
        }
        try:
            with open(ready) as f:
                n, total = f.read().split()
            hold_info.update({"bytes_held_by_torch_empty": int(n), "total_bytes": int(total)})
            os.remove(ready)
        except Exception as e:  # noqa: BLE001
            hold_info["error"] = repr(e)
    try:
        doc = capture(args.label or os.path.basename(base))
        if hold_info:
            doc["holder"] = hold_info
        doc["nvidia_smi_q_file"] = os.path.basename(base) + ".nvidia-smi-q.txt"
        doc["nvidia_smi_topo_file"] = os.path.basename(base) + ".nvidia-smi-topo-m.txt"
        with open(base + ".nvidia-smi-q.txt", "w") as f:
            f.write(run(["nvidia-smi", "-q"]))
        with open(base + ".nvidia-smi-topo-m.txt", "w") as f:
            f.write(run(["nvidia-smi", "topo", "-m"]))
        with open(base + ".json", "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {base}.json ({len(doc['calls'])} calls)")
    finally:
        if holder is not None:
            holder.terminate()
            try:
                holder.wait(timeout=20)
            except subprocess.TimeoutExpired:
                holder.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
