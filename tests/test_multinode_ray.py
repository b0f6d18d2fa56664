"""A real Ray cluster (head + one worker, separate processes, CPU only) started with the argv
`ray.ray_launch` gives, and real vLLM (vllm-cpu) attached to it with the plan's arguments.

vLLM's CPU backend refuses the Ray executor (`CpuPlatform.ray_device_key == ""`, see
scripts/VLLM_CPU_NOTES.md §9), so the launch path is tested up to that refusal: vLLM receives the
plan's `--distributed-executor-backend ray --pipeline-parallel-size 2`, connects to this cluster,
and stops with vLLM's own error. If a vllm-cpu release starts to support Ray, the last test fails
and should become a serving test.
"""

import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from qwdeploy.gpus.specs import named
from qwdeploy.planning import catalog, planner, profiles
from qwdeploy.vllm import ray

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ray") is None, reason="ray is not installed (pip install ray)"),
]

TINY = Path(__file__).parent / "fixtures" / "tiny-qwen3"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(address: str) -> int:
    r = subprocess.run(["ray", "status", f"--address={address}"], capture_output=True, text=True, timeout=60)
    return r.stdout.count(" node_") if r.returncode == 0 else 0


def _stop(proc: subprocess.Popen) -> None:
    """Stop one process group this test started (never `ray stop`: it kills every Ray)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


# A profile for the tokenizer-less fixture: no reasoning parser (it needs the tokenizer's vocab).
TINY_PROFILE = """
weights: [bf16]
kv_cache_dtype: [auto]
max_model_len: 1024
min_max_model_len: 256
min_concurrency: 1
gpu_memory_utilization: 0.9
max_num_seqs: 4
max_num_batched_tokens: 1024
reasoning_parser: null
"""


@pytest.fixture(scope="module")
def tiny_plan():
    prof = profiles.parse(TINY_PROFILE, source="test", name="tiny")
    gpus = tuple(named("H100", 1))
    plan = planner.plan(planner.Problem((catalog.get(str(TINY)),), prof, gpus, nodes=2))
    assert plan.fits and plan.pipeline_parallel_size == 2
    return plan


@pytest.fixture(scope="module")
def cluster(tiny_plan):
    """`ray start --head` and `ray start --address` from the plan's launch steps, as two process
    groups; --block keeps each in the foreground so the test can stop exactly what it started."""
    port = _free_port()
    launch = ray.ray_launch(tiny_plan, "127.0.0.1", port)
    tmp = tempfile.mkdtemp(prefix="qwr", dir="/tmp")  # short: Ray's unix socket paths
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    local = ["--num-cpus=1", "--num-gpus=0", "--block"]
    procs = []
    try:
        with open(Path(tmp) / "head.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    [*launch.head, *local, "--include-dashboard=false", f"--temp-dir={tmp}"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=env,
                )
            )
        address = f"127.0.0.1:{port}"
        _wait(lambda: _nodes(address) >= 1, 90, "the Ray head", procs)
        with open(Path(tmp) / "worker.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    [*launch.worker, *local],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=env,
                )
            )
        _wait(lambda: _nodes(address) >= 2, 90, "the Ray worker", procs)
        yield address
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def _wait(ready, timeout_s: float, what: str, procs) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if ready():
            return
        if any(p.poll() is not None for p in procs):
            pytest.fail(f"{what} exited while starting")
        time.sleep(1)
    pytest.fail(f"{what} did not come up in {timeout_s} s")


def test_ray_steps_of_the_plan_make_a_two_node_cluster(cluster):
    assert _nodes(cluster) == 2


def test_the_head_and_worker_argv_come_from_the_plan(tiny_plan):
    launch = ray.ray_launch(tiny_plan, "10.0.0.1", 6379)
    assert launch.head[:3] == ("ray", "start", "--head") and "--port=6379" in launch.head
    assert "--address=10.0.0.1:6379" in launch.worker


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed (bash scripts/install-test-deps.sh)",
)
def test_vllm_cpu_attaches_to_the_cluster_then_refuses_the_ray_executor(cluster, tiny_plan, tmp_path):
    launch = ray.ray_launch(tiny_plan, cluster.split(":")[0], int(cluster.split(":")[1]))
    assert launch.serve[:2] == ("vllm", "serve")
    model, *args = launch.serve[2:]
    # vllm-cpu's `vllm` console script cannot find its own metadata (VLLM_CPU_NOTES.md §1): run
    # the same server module. CPU-only additions: no weights, no tokenizer, no compile.
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        *args,
        "--load-format",
        "dummy",
        "--skip-tokenizer-init",
        "--enforce-eager",
        "--host",
        "127.0.0.1",
        "--port",
        str(_free_port()),
    ]
    env = dict(
        os.environ,
        RAY_ADDRESS=cluster,
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CACHE_ROOT=str(tmp_path / "vllm-cache"),
        **launch.env,
    )
    log = tmp_path / "vllm.log"
    with open(log, "w") as out, open("/tmp/qwdeploy-vllm.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one vLLM at a time on this machine (serve/warm tests)
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(180)
        finally:
            _stop(proc)
    text = log.read_text()
    assert "'distributed_executor_backend': 'ray'" in text and "'pipeline_parallel_size': 2" in text
    assert "Connected to Ray cluster" in text
    assert rc != 0 and "ValueError: current platform cpu does not support ray." in text
