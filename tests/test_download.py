"""`qwdeploy download` with the real huggingface_hub and modelscope clients against a loopback hub.

tests/hubserver.py serves a tiny Qwen3-shaped repo under both protocols on 127.0.0.1; every test
gets fresh caches (HOME, HF_HOME, MODELSCOPE_CACHE in tmp_path) and no token or endpoint from
the environment.
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hubserver import COMMIT, REPO_ID, HubServer

from qwdeploy.cli import app
from qwdeploy.errors import ExitCode
from qwdeploy.hub import download as dl
from qwdeploy.hub import errors as hub_errors
from qwdeploy.hub import files

SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"
WANTED = sorted(
    [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "model.safetensors.index.json",
        SHARD1,
        SHARD2,
    ]
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


def run(runner, hub, *args, source="hf"):
    return runner.invoke(app, ["download", REPO_ID, "--source", source, "--endpoint", hub.url, *args])


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# ---- each source ---------------------------------------------------------------------------------


def test_hf_download_lands_in_the_hub_cache_with_vllms_files(runner, hub, env):
    result = run(runner, hub, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert list(data) == ["source", "repo_id", "revision", "path", "files", "total_bytes"]
    assert data["path"] == str(env / "hf" / "hub" / "models--Qwen--Qwen3-0.6B" / "snapshots" / COMMIT)
    assert sorted(f["path"] for f in data["files"]) == WANTED
    assert data["total_bytes"] == sum(hub.files[p].size for p in WANTED)


def test_every_file_reported_carries_the_sha256_of_its_content(runner, hub, env):
    data = json.loads(run(runner, hub, "--json").stdout)
    assert {f["path"]: f["sha256"] for f in data["files"]} == {p: hub.files[p].sha256 for p in WANTED}


def test_bin_pt_original_gguf_and_readme_are_never_fetched(runner, hub, env):
    run(runner, hub)
    assert sorted(hub.served) == WANTED


def test_huggingface_hub_finds_the_snapshot_offline_as_vllm_would(runner, hub, env):
    from huggingface_hub import snapshot_download

    path = run(runner, hub).stdout.strip().splitlines()[-1]
    found = snapshot_download(
        REPO_ID,
        cache_dir=str(env / "hf" / "hub"),
        local_files_only=True,
        allow_patterns=["*.safetensors", "*.json"],
    )
    assert found == path


def test_modelscope_finds_the_snapshot_offline_as_vllm_would(runner, hub, env):
    from modelscope.hub.snapshot_download import snapshot_download

    path = run(runner, hub, source="modelscope").stdout.strip().splitlines()[-1]
    found = snapshot_download(REPO_ID, cache_dir=str(env / "ms"), local_files_only=True)
    assert found == path


def test_hf_mirror_from_HF_ENDPOINT_is_used_and_named(runner, hub, env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    result = runner.invoke(app, ["download", REPO_ID, "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["source"] == "hf-mirror"


def test_modelscope_download_lands_in_the_modelscope_cache(runner, hub, env):
    result = run(runner, hub, "--json", source="modelscope")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["source"], data["revision"]) == ("modelscope", "master")
    assert data["path"] == str(env / "ms" / "models" / "Qwen--Qwen3-0.6B" / "snapshots" / "master")
    assert sorted(p.name for p in Path(data["path"]).iterdir()) == WANTED


@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_local_dir_holds_the_plain_files(runner, hub, env, source):
    result = run(runner, hub, "--local-dir", str(env / "out"), source=source)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(env / "out")
    for p in WANTED:
        assert (env / "out" / p).read_bytes() == hub.files[p].data


def test_a_second_run_fetches_nothing(runner, hub, env):
    run(runner, hub)
    hub.served.clear()
    assert run(runner, hub).exit_code == 0
    assert hub.body_bytes() == 0


def test_dry_run_lists_sizes_and_total_and_writes_nothing(runner, hub, env):
    result = run(runner, hub, "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert {f["path"]: f["size"] for f in data["files"]} == {p: hub.files[p].size for p in WANTED}
    assert data["total_bytes"] == sum(hub.files[p].size for p in WANTED)
    assert (hub.body_bytes(), files_under(env / "hf")) == (0, [])


def test_dry_run_on_a_short_disk_lists_the_files_then_says_so(runner, hub, env, monkeypatch):
    monkeypatch.setattr(dl, "free_bytes", lambda path: 100_000)
    result = run(runner, hub, "--dry-run", "--json")
    assert result.exit_code == ExitCode.DISK_FULL
    assert json.loads(result.stdout)["total_bytes"] == sum(hub.files[p].size for p in WANTED)


def test_the_summary_says_which_source_served_and_stdout_is_the_path(runner, hub, env):
    result = run(runner, hub, source="hf-mirror")
    assert "from hf-mirror" in result.stderr and "verified" in result.stderr
    assert Path(result.stdout.strip(), "config.json").is_file()


def test_rich_progress_draws_bytes_and_files_while_the_clients_run(hub, env):
    import io

    from rich.console import Console

    from qwdeploy.cli.progress import RichProgress

    out = io.StringIO()
    bar = RichProgress(Console(file=out, force_terminal=True, width=120), bars=True)
    for source in ("hf-mirror", "modelscope"):
        dl.download(REPO_ID, where=dl.Where(sources=[files.Source(source, hub.url)]), progress=bar)
    assert "9/9 files" in out.getvalue() and "downloading from modelscope" in out.getvalue()


# ---- interrupted, corrupted ---------------------------------------------------------------------


def partial_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.incomplete"))


@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_after_a_cut_transfer_the_next_run_fetches_only_what_is_missing(runner, hub, env, source):
    hub.cut = {SHARD1: 40_000}
    first = run(runner, hub, source=source)
    assert first.exit_code == ExitCode.NETWORK, first.stderr
    kept = partial_bytes(env)  # ModelScope keeps the partial file; huggingface_hub 2.x drops it
    hub.cut, hub.served = {}, type(hub.served)()
    assert run(runner, hub, source=source).exit_code == 0
    assert dict(hub.served) == {SHARD1: hub.files[SHARD1].size - kept}


def test_modelscope_resumes_a_cut_file_from_the_byte_it_stopped_at(runner, hub, env):
    hub.cut = {SHARD1: 40_000}
    run(runner, hub, source="modelscope")
    hub.cut, hub.served = {}, type(hub.served)()
    run(runner, hub, source="modelscope")
    assert hub.served[SHARD1] == hub.files[SHARD1].size - 40_000


def test_a_cut_transfer_leaves_no_file_that_looks_complete(runner, hub, env):
    hub.cut = {SHARD1: 40_000}
    run(runner, hub, source="modelscope")
    assert not (env / "ms" / "models" / "Qwen--Qwen3-0.6B" / "snapshots" / "master" / SHARD1).exists()


def test_a_corrupt_file_is_fetched_once_more_and_then_passes(runner, hub, env):
    hub.corrupt = {SHARD2: 1}
    result = run(runner, hub)
    assert result.exit_code == 0, result.stderr
    assert hub.served[SHARD2] == 2 * hub.files[SHARD2].size


def test_a_file_that_stays_corrupt_fails_verification_and_is_deleted(runner, hub, env):
    hub.corrupt = {SHARD2: 99}
    result = run(runner, hub)
    assert result.exit_code == ExitCode.VERIFY_FAILED
    assert SHARD2 in result.stderr and "sha256" in result.stderr
    blobs = env / "hf" / "hub" / "models--Qwen--Qwen3-0.6B" / "blobs"
    assert not any(p.name in (SHARD2, hub.files[SHARD2].sha256) for p in files_under(env / "hf"))
    others = sorted(hub.files[p].etag for p in WANTED if p != SHARD2)
    assert sorted(p.name for p in blobs.iterdir()) == others


def test_a_corrupt_small_file_is_caught_by_its_git_oid(runner, hub, env):
    hub.corrupt = {"tokenizer.json": 99}
    result = run(runner, hub, "--local-dir", str(env / "out"))
    assert result.exit_code == ExitCode.VERIFY_FAILED
    assert not (env / "out" / "tokenizer.json").exists()


def test_a_corrupt_file_from_modelscope_fails_verification(runner, hub, env):
    hub.corrupt = {SHARD2: 99}
    assert run(runner, hub, source="modelscope").exit_code == ExitCode.VERIFY_FAILED


# ---- refusals ------------------------------------------------------------------------------------


def test_the_fake_hub_answers_a_missing_repo_as_huggingface_co_does(hub):
    hub.missing = True
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{hub.url}/api/models/{REPO_ID}")
    assert (e.value.code, e.value.headers.get("X-Error-Code")) == (401, None)


def test_a_missing_repo_asked_for_with_a_token_is_exit_20(runner, hub, env, monkeypatch):
    hub.missing = True
    monkeypatch.setenv("HF_TOKEN", "hf_aValidLookingToken")
    assert run(runner, hub).exit_code == ExitCode.NOT_FOUND


@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_a_missing_repo_is_exit_20(runner, hub, env, source):
    hub.missing = True
    result = run(runner, hub, source=source)
    assert result.exit_code == ExitCode.NOT_FOUND
    assert result.stderr.startswith("Error: ") and "Hint: " in result.stderr


def test_an_unknown_revision_is_exit_20(runner, hub, env):
    assert run(runner, hub, "--revision", "v9").exit_code == ExitCode.NOT_FOUND


@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_a_gated_repo_without_token_is_exit_21(runner, hub, env, source):
    hub.gated, hub.token = True, "sekrit-token"
    result = run(runner, hub, source=source)
    assert result.exit_code == ExitCode.UNAUTHORIZED
    assert "TOKEN" in result.stderr


@pytest.mark.parametrize(("source", "var"), [("hf", "HF_TOKEN"), ("modelscope", "MODELSCOPE_API_TOKEN")])
def test_a_gated_repo_opens_with_the_token_which_is_never_printed(runner, hub, env, monkeypatch, source, var):
    hub.gated, hub.token = True, "sekrit-token"
    monkeypatch.setenv(var, "sekrit-token")
    result = run(runner, hub, source=source)
    assert result.exit_code == 0, result.stderr
    assert "sekrit" not in result.stdout + result.stderr


def test_not_enough_disk_is_refused_before_any_byte_is_written(runner, hub, env, monkeypatch):
    monkeypatch.setattr(dl, "free_bytes", lambda path: 100_000)
    result = run(runner, hub)
    assert result.exit_code == ExitCode.DISK_FULL
    assert (hub.body_bytes(), files_under(env / "hf")) == (0, [])


@pytest.mark.parametrize("source", ["hf", "modelscope"])
@pytest.mark.parametrize("name", ["../../evil.json", "/tmp/evil.json"])
def test_a_file_name_that_escapes_the_destination_is_refused(runner, hub, env, source, name):
    hub.hostile = name
    result = run(runner, hub, "--local-dir", str(env / "out"), source=source)
    assert result.exit_code == ExitCode.ERROR
    assert "escape" in result.stderr
    assert (hub.body_bytes(), files_under(env / "out")) == (0, [])


# ---- fallback ------------------------------------------------------------------------------------


@pytest.fixture
def second_hub():
    with HubServer() as server:
        yield server


def test_first_source_down_the_next_one_serves(hub, second_hub, env):
    hub.down = True
    sources = [files.Source("hf-mirror", hub.url), files.Source("modelscope", second_hub.url)]
    result = dl.download(REPO_ID, where=dl.Where(sources=sources))
    assert result.manifest.source.name == "modelscope"
    assert sorted(second_hub.served) == WANTED


def test_a_source_failing_mid_download_hands_over_to_the_next(hub, second_hub, env):
    hub.cut = {SHARD1: 40_000}
    sources = [files.Source("hf-mirror", hub.url), files.Source("modelscope", second_hub.url)]
    result = dl.download(REPO_ID, where=dl.Where(sources=sources))
    assert (result.manifest.source.name, hub.served[SHARD1] > 0) == ("modelscope", True)
    assert (Path(result.path) / SHARD1).read_bytes() == second_hub.files[SHARD1].data


def test_when_every_source_fails_the_most_telling_error_is_shown(hub, second_hub, env):
    hub.down, second_hub.gated = True, True
    sources = [files.Source("hf-mirror", hub.url), files.Source("modelscope", second_hub.url)]
    with pytest.raises(files.DownloadError) as e:
        dl.download(REPO_ID, where=dl.Where(sources=sources))
    assert e.value.exit_code == ExitCode.UNAUTHORIZED


def test_when_every_source_fails_each_ones_error_is_listed(hub, second_hub, env):
    hub.down, second_hub.gated = True, True
    sources = [files.Source("hf-mirror", hub.url), files.Source("modelscope", second_hub.url)]
    with pytest.raises(files.DownloadError) as e:
        dl.download(REPO_ID, where=dl.Where(sources=sources))
    said = e.value.message
    assert f"hf-mirror ({hub.url}): " in said and f"modelscope ({second_hub.url}): access refused" in said


def test_auto_skips_a_source_that_does_not_answer_and_says_who_served(runner, hub, second_hub, env, monkeypatch):
    hub.down = True
    order = (("hf", hub.url), ("hf-mirror", hub.url), ("modelscope", second_hub.url))
    monkeypatch.setattr(files, "AUTO_ORDER", order)  # choose_sources reads it
    result = runner.invoke(app, ["download", REPO_ID])
    assert result.exit_code == 0, result.stderr
    assert "did not answer" in result.stderr and "from modelscope" in result.stderr
    assert "VLLM_USE_MODELSCOPE=true" in result.stderr


def test_the_probe_tells_a_down_hub_from_a_live_one(hub, second_hub):
    hub.down = True
    assert (dl.no_answer(hub.url, timeout=2) is not None, dl.no_answer(second_hub.url, timeout=2)) == (True, None)


def test_no_network_beyond_loopback_is_configured(hub):
    assert hub.url.startswith("http://127.0.0.1:") and os.environ.get("HF_ENDPOINT") is None


# ---- what a failed download says -----------------------------------------------------------------


@pytest.fixture
def no_dns(monkeypatch):
    """Names under .invalid (RFC 6761) never resolve: the resolver says so at once, here as anywhere."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if str(host).endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_a_host_that_does_not_resolve_is_said_as_such(runner, env, no_dns):
    result = runner.invoke(app, ["download", REPO_ID, "--endpoint", "http://hub.qwdeploy.invalid", "--dry-run"])
    assert result.exit_code == ExitCode.NETWORK and "could not resolve host hub.qwdeploy.invalid" in result.stderr


def test_auto_says_which_hosts_did_not_resolve_and_lists_every_sources_error(runner, env, no_dns, monkeypatch):
    order = tuple((name, f"http://{name}.qwdeploy.invalid") for name in ("hf", "hf-mirror", "modelscope"))
    monkeypatch.setattr(files, "AUTO_ORDER", order)
    result = runner.invoke(app, ["download", REPO_ID, "--dry-run"])
    error = next(line for line in result.stderr.splitlines() if line.startswith("Error:"))
    assert [f"could not resolve host {n}.qwdeploy.invalid" in error for n, _ in order] == [True] * 3
    assert "did not answer within" not in result.stderr


def test_a_dry_run_that_fails_gives_no_resume_hint(runner, env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = runner.invoke(app, ["download", REPO_ID, "--endpoint", closed, "--dry-run"])
    assert result.exit_code == ExitCode.NETWORK and "connection refused" in result.stderr
    assert "run again" not in result.stderr


def test_a_long_client_message_is_cut_between_words(monkeypatch):
    source = files.Source("hf", "https://huggingface.co")
    with pytest.raises(files.DownloadError) as e, hub_errors.client_errors(source, REPO_ID):
        raise ConnectionError(" ".join(f"word{i}" for i in range(200)))
    last = e.value.message.split()[-1]
    assert last.endswith("…") and re.fullmatch(r"word\d+…", last)
