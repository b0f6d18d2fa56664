"""supervisor.serve supervising a stand-in for vLLM: a small OpenAI-shaped HTTP server that prints
vLLM's log lines (fast; the real vLLM runs in test_serve_vllm.py). Checks readiness (listing,
then a completion), the log follower, failures, and that signals stop the whole group."""

import os
import signal
import socket
import sys
import threading
import time
from dataclasses import replace

import pytest

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.vllm import command, failures, supervisor
from qwdeploy.vllm import phases as vllm_phases

FAKE_VLLM = r"""
import json, os, signal, subprocess, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

mode, port, name, marks = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
P = "(EngineCore pid=%d) INFO 11-25 01:09:%02d [x.py:1] "
def log(line):
    print(line, flush=True)

def on_signal(signum, frame):
    open(marks, "a").write(signal.Signals(signum).name + "\n")
    os._exit(0)

if mode == "stubborn":
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    code = "import signal,time;[signal.signal(s,signal.SIG_IGN) for s in (2,15)];time.sleep(600)"
    child = subprocess.Popen([sys.executable, "-c", code])
    open(marks, "a").write("child %d\n" % child.pid)
else:
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

log(P % (os.getpid(), 1) + "Initializing a V1 LLM engine (v0.32.0) with config: enforce_eager=True")
log(P % (os.getpid(), 2) + "Starting to load model /m...")
if mode == "refuse":
    log(P % (os.getpid(), 3) + "ValueError: To serve at least one request with the model's max "
        "seq len (4096), (0.0 GiB KV cache is needed, which is larger than the available KV cache "
        "memory (0.0 GiB). Based on the available memory, the estimated maximum model length is "
        "896. Try increasing `gpu_memory_utilization`.")
    sys.exit(1)
log(P % (os.getpid(), 3) + "Initializing model took 0.05 seconds")
log(P % (os.getpid(), 4) + "CPU KV cache size: 1,048,576 tokens, Maximum concurrency for 1,024 "
    "tokens per request: 1024.00x")
log(P % (os.getpid(), 5) + "init engine (profile, create kv cache, warmup model) took 0.40 s")
start = time.monotonic()
list_after = float(os.environ.get("FAKE_LIST_AFTER", "0"))

class Handler(BaseHTTPRequestHandler):
    def send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorised(self):
        key = os.environ.get("VLLM_API_KEY")
        return not key or self.headers.get("Authorization") == "Bearer " + key

    def do_GET(self):
        if self.path == "/health":
            return self.send(200, {})
        if not self.authorised():
            return self.send(401, {"error": "Unauthorized"})
        listed = time.monotonic() - start >= list_after
        self.send(200, {"object": "list", "data": [{"id": name}] if listed else []})

    def do_POST(self):
        if not self.authorised():
            return self.send(401, {"error": "Unauthorized"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not isinstance(body["prompt"], list):
            return self.send(400, {"error": {"message": "Tokenizer not available"}})
        self.send(200, {"choices": [{"text": "", "finish_reason": "length"}]})
        if mode == "crash":
            threading.Timer(0.3, lambda: os._exit(3)).start()

    def log_message(self, fmt, *args):
        print("INFO:     " + fmt % args, flush=True)

server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
log("INFO:     Application startup complete.")
server.serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_VLLM)
    marks = tmp_path / "marks"
    marks.write_text("")

    def make(mode="serve", env=None):
        port = free_port()
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        return command.Launch(
            argv=(sys.executable, str(script), mode, str(port), "fake-model", str(marks)),
            env={},
            host="127.0.0.1",
            port=port,
            served_model_name="fake-model",
            device="cpu",
        )

    make.marks = marks
    make.log = tmp_path / "vllm.log"
    return make


def on_ready(sig, seen):
    """Watch a start; once ready, this process gets `sig` (as Ctrl-C or `kill` would send it)."""
    return supervisor.Watch(on_ready=signal_self_when_ready(sig, seen))


def signal_self_when_ready(sig, seen):
    def on_ready(ready):
        seen.append(ready)
        threading.Timer(0.2, os.kill, (os.getpid(), sig)).start()

    return on_ready


def test_ready_means_listed_and_answered_then_sigint_stops_the_group(fake):
    seen = []
    stopped = supervisor.serve(fake(), fake.log, watch=on_ready(signal.SIGINT, seen))
    assert seen[0].model == "fake-model" and seen[0].endpoint.endswith("/v1")
    assert (stopped.signal, stopped.vllm_exit_code, stopped.survivors) == ("SIGINT", 0, 0)
    assert fake.marks.read_text() == "SIGINT\n"  # forwarded to vLLM's group as SIGINT


def test_sigterm_is_forwarded_as_sigterm(fake):
    stopped = supervisor.serve(fake(), fake.log, watch=on_ready(signal.SIGTERM, []))
    assert stopped.signal == "SIGTERM" and fake.marks.read_text() == "SIGTERM\n"


def test_readiness_waits_until_the_model_is_listed(fake):
    seen = []
    supervisor.serve(fake(env={"FAKE_LIST_AFTER": "1.5"}), fake.log, watch=on_ready(signal.SIGINT, seen))
    assert seen[0].seconds >= 1.5  # /health answered long before


def test_the_report_at_ready_holds_the_logged_figures(fake):
    seen = []
    supervisor.serve(fake(), fake.log, watch=on_ready(signal.SIGINT, seen))
    report = seen[0].report
    assert (report.kv_cache_tokens, report.max_concurrency) == (1048576, 1024.0)


def test_phases_are_shown_as_vllm_enters_them(fake):
    phases = []
    watch = supervisor.Watch(
        on_phase=lambda name, t: phases.append(name), on_ready=signal_self_when_ready(signal.SIGINT, [])
    )
    supervisor.serve(fake(), fake.log, watch=watch)
    assert phases[:2] == [vllm_phases.ENGINE, vllm_phases.LOADING] and vllm_phases.SERVING in phases


def test_api_key_is_sent_by_the_readiness_checks(fake):
    cfg = fake()
    cfg = command.Launch(**{**cfg.__dict__, "env": {"VLLM_API_KEY": "k3y"}})
    stopped = supervisor.serve(cfg, fake.log, api_key="k3y", watch=on_ready(signal.SIGINT, []))
    assert stopped.signal == "SIGINT"


def test_a_group_that_ignores_signals_is_killed_after_the_timeout(fake):
    t0 = time.monotonic()
    stopped = supervisor.serve(
        fake("stubborn"), fake.log, watch=replace(on_ready(signal.SIGINT, []), stop_timeout_s=1.0)
    )
    child = int(fake.marks.read_text().split()[1])
    assert stopped.killed and stopped.survivors == 0
    assert not os.path.exists(f"/proc/{child}") or "Z" in open(f"/proc/{child}/stat").read()
    assert time.monotonic() - t0 < 20


def test_a_refused_start_is_one_line_with_vllms_fix(fake):
    with pytest.raises(supervisor.StartFailed) as e:
        supervisor.serve(fake("refuse"), fake.log)
    assert e.value.exit_code == ExitCode.SERVE_FAILED
    assert e.value.message.startswith("vLLM exited with code 1 before it was ready")
    assert "--max-model-len 896" in e.value.message and "\n" not in e.value.message
    assert e.value.failure.kind == failures.KV_TOO_SMALL and e.value.log_tail


def test_vllm_exiting_while_serving_is_a_failure(fake):
    with pytest.raises(supervisor.StartFailed) as e:
        supervisor.serve(fake("crash"), fake.log)
    assert e.value.message == "vLLM exited with code 3 while serving"


def test_not_ready_in_time_is_a_failure_naming_the_phase(fake):
    with pytest.raises(supervisor.StartFailed) as e:
        supervisor.serve(fake(env={"FAKE_LIST_AFTER": "600"}), fake.log, watch=supervisor.Watch(ready_timeout_s=2))
    assert "not ready after 2 s" in e.value.message and "--ready-timeout" in e.value.hint


def test_a_port_in_use_fails_before_starting_vllm(fake):
    cfg = fake()
    with socket.socket() as s:
        s.bind(("127.0.0.1", cfg.port))
        s.listen()
        with pytest.raises(QwdeployError) as e:
            supervisor.serve(cfg, fake.log)
    assert e.value.exit_code == ExitCode.SERVE_FAILED and not fake.log.exists()


def test_group_members_sees_a_process_group_and_its_end():
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        assert supervisor.group_members(p.pid) == [p.pid]
    finally:
        p.kill()
        p.wait()
    assert supervisor.group_members(p.pid) == []
