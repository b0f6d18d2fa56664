#!/usr/bin/env python3
"""Start the real vLLM CPU OpenAI server on the tiny Qwen3 fixture and measure it.

Starts `python -m vllm.entrypoints.openai.api_server` in its own process group,
tees its stdout+stderr to --log, measures seconds to /health 200, to /v1/models
listing the served model, and to the first /v1/completions answer (prompt given
as token ids, as there is no tokenizer), then sends SIGINT to the process group
and reports the exit code and any processes left. Prints one JSON object.

Usage:
  python scripts/vllm_cpu_probe.py --log /tmp/serve.log [--port N] [--no-request]
         [--expect-fail] [-- extra api_server args]
Env passed through; VLLM_CPU_KVCACHE_SPACE defaults to 1 here (--kv-space).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "tests", "fixtures", "tiny-qwen3")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 5.0):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as e:
        return None, repr(e)


def group_pids(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,pgid,stat,args"], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines()[1:]:
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[1] == str(pgid):
            rows.append(line.strip())
    return rows


def group_rss_mib(pgid: int) -> float:
    out = subprocess.run(["ps", "-eo", "pgid,rss"], capture_output=True, text=True).stdout
    kib = sum(int(r.split()[1]) for r in out.splitlines()[1:] if len(r.split()) == 2 and r.split()[0] == str(pgid))
    return round(kib / 1024, 1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--max-model-len", default="1024")
    ap.add_argument("--max-num-seqs", default="4")
    ap.add_argument("--max-num-batched-tokens", default="1024")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--ready-timeout", type=float, default=600)
    ap.add_argument(
        "--kv-space",
        default=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        help="VLLM_CPU_KVCACHE_SPACE in GiB; 'unset' removes it from the env",
    )
    ap.add_argument("--no-request", action="store_true")
    ap.add_argument("--expect-fail", action="store_true")
    ap.add_argument("--no-stop", action="store_true", help="leave running; print pgid")
    ap.add_argument("--stop-signal", default="INT", choices=["INT", "TERM"])
    ap.add_argument(
        "--leader-only",
        action="store_true",
        help="signal only the api_server pid, not its process group",
    )
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()

    port = a.port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        a.model,
        "--load-format",
        "dummy",
        "--skip-tokenizer-init",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        a.max_model_len,
        "--max-num-seqs",
        a.max_num_seqs,
        "--max-num-batched-tokens",
        a.max_num_batched_tokens,
        "--dtype",
        a.dtype,
        "--served-model-name",
        "tiny-qwen3",
        *a.extra,
    ]
    env = dict(os.environ)
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    if a.kv_space != "unset":  # an empty value crashes vLLM's int() parsing
        env["VLLM_CPU_KVCACHE_SPACE"] = a.kv_space
    res: dict = {
        "cmd": cmd,
        "port": port,
        "env": {k: v for k, v in env.items() if k.startswith(("VLLM_", "OMP_", "RAY_"))},
    }
    logf = open(a.log, "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        text=True,
        bufsize=1,
    )
    pgid = proc.pid

    def pump():
        for line in proc.stdout:
            logf.write(line)
            logf.flush()

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    base = f"http://127.0.0.1:{port}"
    t_health = t_models = None
    while time.monotonic() - t0 < a.ready_timeout:
        if proc.poll() is not None:
            break
        if t_health is None:
            st, _ = http("GET", base + "/health", timeout=2)
            if st == 200:
                t_health = time.monotonic() - t0
        if t_health is not None and t_models is None:
            st, body = http("GET", base + "/v1/models", timeout=5)
            if st == 200 and "tiny-qwen3" in body:
                t_models = time.monotonic() - t0
                res["models_body"] = json.loads(body)
                break
        time.sleep(0.25)
    res["s_to_health"] = t_health and round(t_health, 1)
    res["s_to_models"] = t_models and round(t_models, 1)
    res["exited_before_ready"] = proc.poll()
    if t_models is not None and not a.no_request:
        body = {
            "model": "tiny-qwen3",
            "prompt": [151643, 9707, 11, 1879, 0],
            "max_tokens": 8,
            "temperature": 0,
        }
        res["completion_request"] = body
        t1 = time.monotonic()
        st, txt = http("POST", base + "/v1/completions", body, timeout=300)
        res["s_first_completion"] = round(time.monotonic() - t1, 2)
        res["completion_status"] = st
        try:
            res["completion_response"] = json.loads(txt)
        except ValueError:
            res["completion_response"] = txt
        t1 = time.monotonic()
        st, txt = http("POST", base + "/v1/completions", body, timeout=300)
        res["s_second_completion"] = round(time.monotonic() - t1, 2)
        # string prompt without tokenizer
        st2, txt2 = http(
            "POST",
            base + "/v1/completions",
            {"model": "tiny-qwen3", "prompt": "Hello", "max_tokens": 4},
            timeout=60,
        )
        res["string_prompt_status"] = st2
        res["string_prompt_response"] = txt2[:600]
        st3, txt3 = http(
            "POST",
            base + "/v1/completions",
            {"model": "tiny-qwen3", "prompt": [1, 2, 3], "max_tokens": 4, "return_token_ids": True},
            timeout=60,
        )
        res["return_token_ids_status"] = st3
        res["return_token_ids_response"] = txt3[:1500]
    if a.no_stop:
        res["pgid"] = pgid
        print(json.dumps(res, indent=1))
        return 0
    if proc.poll() is None:
        res["children_before_sigint"] = group_pids(pgid)
        res["group_rss_mib_ready"] = group_rss_mib(pgid)
        target = "leader pid" if a.leader_only else "process group"
        res["stop"] = f"SIG{a.stop_signal} to {target}"
        sig = signal.SIGINT if a.stop_signal == "INT" else signal.SIGTERM
        ts = time.monotonic()
        if a.leader_only:
            os.kill(pgid, sig)
        else:
            os.killpg(pgid, sig)
        try:
            proc.wait(timeout=60)
            res["sigint_exit_code"] = proc.returncode
            res["s_sigint_to_exit"] = round(time.monotonic() - ts, 1)
        except subprocess.TimeoutExpired:
            res["sigint_exit_code"] = "timeout-60s"
        time.sleep(3)
        res["left_after_sigint"] = group_pids(pgid)
        if res["left_after_sigint"]:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    else:
        res["exit_code"] = proc.returncode
        time.sleep(1)
        res["left_after_exit"] = group_pids(pgid)
        if res["left_after_exit"]:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    res["s_total"] = round(time.monotonic() - t0, 1)
    th.join(timeout=5)
    logf.close()
    print(json.dumps(res, indent=1))
    ok = (t_models is not None) != a.expect_fail
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
