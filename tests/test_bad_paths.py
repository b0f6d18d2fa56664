"""Files and directories a user can get wrong, each one `Error:` line, a `Hint:` and its exit code:
a binary profile, a config.json that is no JSON object, a cache, log or download directory that
cannot be written (a file, read-only, under /proc), for serve and warm, dry runs included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_checks import is_one_error
from hubserver import REPO_ID, HubServer

from qwdeploy.cli import app
from qwdeploy.errors import ExitCode
from qwdeploy.vllm import launch, supervisor
from qwdeploy.vllm.cpu import HostMemory

TINY = str(Path(__file__).parent / "fixtures" / "tiny-qwen3")
SMALL = ["--max-model-len", "1024", "--max-num-seqs", "4", "--max-num-batched-tokens", "1024"]
GiB = 1 << 30


@pytest.fixture(autouse=True)
def nothing_starts(cpu_machine, monkeypatch):
    """The CPU node with 8 GiB free; nothing may start vLLM here."""
    monkeypatch.setattr(launch, "read_host_memory", lambda *a: HostMemory(11 * GiB, 8 * GiB, "test"))
    monkeypatch.setattr(supervisor.Server, "start", lambda self: pytest.fail("nothing may start vLLM here"))


@pytest.fixture
def a_file(tmp_path) -> Path:
    f = tmp_path / "a-file"
    f.write_text("not a directory\n")
    return f


@pytest.fixture(params=["file", "read-only", "proc"])
def unwritable(request, a_file, read_only_dir) -> Path:
    return {"file": a_file, "read-only": read_only_dir / "cache", "proc": Path("/proc/qwdeploy-test")}[request.param]


def test_a_binary_profile_is_one_error(runner, tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_bytes(bytes(range(256)))
    result = runner.invoke(app, ["plan", "Qwen/Qwen3-8B", "--gpu", "H100", "--profile", str(profile)])
    assert is_one_error(result, ExitCode.ERROR) and "not a text file" in result.stderr


def test_a_config_json_that_is_a_list_is_one_error(runner, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    result = runner.invoke(app, ["plan", str(tmp_path), "--gpu", "H100"])
    assert is_one_error(result, ExitCode.ERROR) and "JSON object" in result.stderr


@pytest.mark.parametrize(
    ("key", "value"),
    [("rope_scaling", 5.4e16), ("rope_scaling", {"rope_type": "yarn", "factor": "4"}), ("rope_theta", "1e6")],
)
def test_a_config_json_value_of_the_wrong_kind_is_one_error(runner, tmp_path, key, value):
    config = json.loads((Path(TINY) / "config.json").read_text()) | {key: value}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["plan", str(tmp_path), "--gpu", "H100"])
    assert is_one_error(result, ExitCode.ERROR) and key in result.stderr


def test_a_cache_dir_that_cannot_be_written_stops_a_serve_dry_run(runner, monkeypatch, unwritable):
    monkeypatch.setenv("QWDEPLOY_CACHE_DIR", str(unwritable))
    result = runner.invoke(app, ["serve", TINY, *SMALL, "--dry-run"])
    assert is_one_error(result, ExitCode.ERROR) and "QWDEPLOY_CACHE_DIR" in result.stderr


def test_a_cache_dir_that_cannot_be_written_stops_warm(runner, monkeypatch, unwritable):
    monkeypatch.setenv("QWDEPLOY_CACHE_DIR", str(unwritable))
    assert is_one_error(runner.invoke(app, ["warm", TINY, *SMALL]), ExitCode.ERROR)


def test_serve_cache_dir_that_is_a_file_is_one_error(runner, a_file):
    result = runner.invoke(app, ["serve", TINY, *SMALL, "--cache-dir", str(a_file)])
    assert is_one_error(result, ExitCode.ERROR) and f"{a_file} is not a directory" in result.stderr


def test_serve_log_file_under_proc_is_refused_before_anything_starts(runner, monkeypatch):
    monkeypatch.setattr(launch, "ensure_weights", lambda *a, **k: pytest.fail("refused before the weights"))
    result = runner.invoke(app, ["serve", TINY, *SMALL, "--log-file", "/proc/qwdeploy-test.log"])
    assert is_one_error(result, ExitCode.ERROR) and "--log-file" in result.stderr


# ---- download --local-dir ------------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with HubServer() as server:
        yield server


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["download", "dry-run"])
def test_download_into_a_directory_that_cannot_be_written_is_one_error(runner, hub, unwritable, dry_run):
    args = ["download", REPO_ID, "--source", "hf", "--endpoint", hub.url, "--local-dir", str(unwritable)]
    result = runner.invoke(app, [*args, *dry_run])
    assert is_one_error(result, ExitCode.ERROR) and "--local-dir" in result.stderr
    assert "free disk" not in result.stderr and hub.body_bytes() == 0
