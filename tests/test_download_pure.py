"""The pure part of qwdeploy.download: selection, name safety, manifest, disk margin, sources."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwdeploy.errors import ExitCode
from qwdeploy.hub import clients, errors
from qwdeploy.hub import download as dl
from qwdeploy.hub import files as hub

GiB = 1 << 30
HF = hub.Source("hf", hub.HF_ENDPOINT)


def test_selection_keeps_what_vllm_reads():
    names = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "model.safetensors.index.json",
        "model-00001-of-00017.safetensors",
        "model.safetensors",
        "chat_template.jinja",
        "quantize_config.json",
    ]
    assert [n for n in names if hub.is_wanted(n)] == names


@pytest.mark.parametrize(
    "name",
    [
        "pytorch_model.bin",
        "pytorch_model-00001-of-00002.bin",
        "model.pt",
        "consolidated.00.pth",
        "original/model.safetensors",
        "original/params.json",
        "qwen3-8b-q4_k_m.gguf",
        "gguf/config.json",
        "README.md",
        "LICENSE",
        ".gitattributes",
        "flax_model.msgpack",
        "configuration.json",
    ],
)
def test_selection_drops_duplicates_subfolders_and_docs(name):
    assert not hub.is_wanted(name)


@pytest.mark.parametrize(
    "name",
    [
        "../config.json",
        "../../.bashrc",
        "/etc/passwd",
        "a/../../b.json",
        "C:/x.json",
        "dir\\..\\x",
        "./config.json",
        "a//b",
        "",
        "x\0.json",
    ],
)
def test_names_that_could_escape_the_destination_are_unsafe(name):
    assert hub.unsafe_reason(name)


@pytest.mark.parametrize("name", ["config.json", "original/params.json", "a..b.safetensors", "..hidden"])
def test_ordinary_names_are_safe(name):
    assert hub.unsafe_reason(name) is None


def listing(*extra: hub.RemoteFile) -> list[hub.RemoteFile]:
    return [
        hub.RemoteFile("config.json", 700, git_oid="a" * 40),
        hub.RemoteFile("model.safetensors", 10 * GiB, sha256="b" * 64),
        hub.RemoteFile("pytorch_model.bin", 10 * GiB, sha256="c" * 64),
        *extra,
    ]


def test_manifest_counts_only_the_selected_files():
    m = hub.build_manifest(HF, "Qwen/Qwen3-8B", "main", "f" * 40, listing())
    assert (m.total_bytes, m.skipped) == (700 + 10 * GiB, ("pytorch_model.bin",))


def test_a_hostile_name_anywhere_in_the_listing_refuses_the_whole_repo():
    with pytest.raises(hub.DownloadError, match="escape"):
        hub.build_manifest(HF, "Qwen/Qwen3-8B", "main", None, listing(hub.RemoteFile("../x.json", 1)))


def test_a_repo_without_safetensors_is_not_found():
    with pytest.raises(hub.DownloadError) as e:
        hub.build_manifest(HF, "Qwen/Qwen3-8B", "main", None, listing()[:1])
    assert e.value.exit_code == ExitCode.NOT_FOUND


def test_disk_margin_is_5_percent_plus_1_gib():
    assert hub.disk_margin_bytes(20 * GiB) == GiB + GiB  # 20 GiB / 20 + 1 GiB


def test_nothing_to_fetch_needs_no_margin():
    assert hub.disk_margin_bytes(0) == 0


def test_short_disk_is_refused_with_the_numbers():
    with pytest.raises(hub.DownloadError, match=r"needs 16\.00 GiB .* 16\.50 GiB free") as e:
        hub.check_disk(16 * GiB, 16 * GiB + GiB // 2, Path("/data"))
    assert e.value.exit_code == ExitCode.DISK_FULL


def test_enough_disk_passes():
    hub.check_disk(16 * GiB, 16 * GiB + (16 * GiB) // 20 + GiB, Path("/data"))


def test_files_already_there_are_not_counted_as_needed(tmp_path):
    m = hub.build_manifest(HF, "Qwen/Qwen3-8B", "main", None, listing())
    (tmp_path / "config.json").write_bytes(b"x" * 700)
    plan = hub.Plan(m, tmp_path, hub.present(m, tmp_path), free_bytes=0)
    assert plan.needed_bytes == 10 * GiB


# ---- sources ------------------------------------------------------------------------------------


def names(sources):
    return [(s.name, s.endpoint) for s in sources]


def test_auto_without_settings_probes_hf_then_the_mirror_then_modelscope():
    sources, probe = hub.choose_sources("auto", None, {})
    assert probe and names(sources) == [
        ("hf", "https://huggingface.co"),
        ("hf-mirror", "https://hf-mirror.com"),
        ("modelscope", "https://modelscope.cn"),
    ]


def test_endpoint_flag_pins_a_mirror():
    sources, probe = hub.choose_sources("auto", "https://mirror.example/", {"HF_ENDPOINT": "https://other"})
    assert (probe, names(sources)) == (False, [("hf-mirror", "https://mirror.example")])


def test_HF_ENDPOINT_pins_a_mirror():
    sources, probe = hub.choose_sources("auto", None, {"HF_ENDPOINT": "https://hf-mirror.com"})
    assert (probe, names(sources)) == (False, [("hf-mirror", "https://hf-mirror.com")])


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({"MODELSCOPE_ENDPOINT": "https://www.modelscope.ai"}, "https://www.modelscope.ai"),
        ({"MODELSCOPE_DOMAIN": "modelscope.cn"}, "https://modelscope.cn"),
        ({"VLLM_USE_MODELSCOPE": "True"}, "https://modelscope.cn"),
    ],
)
def test_modelscope_settings_pin_modelscope(env, endpoint):
    assert hub.choose_sources("auto", None, env) == (
        [hub.Source("modelscope", endpoint, True)],
        False,
    )


def test_source_flag_beats_the_environment():
    sources, _ = hub.choose_sources("hf", None, {"MODELSCOPE_ENDPOINT": "https://x"})
    assert names(sources) == [("hf", "https://huggingface.co")]


def test_unknown_source_is_a_usage_error():
    with pytest.raises(hub.DownloadError) as e:
        hub.choose_sources("github", None, {})
    assert e.value.exit_code == ExitCode.USAGE


def test_reachable_sources_go_first_and_unreachable_stay_as_a_last_try():
    sources, _ = hub.choose_sources("auto", None, {})
    reachable = {
        "https://huggingface.co": False,
        "https://hf-mirror.com": True,
        "https://modelscope.cn": True,
    }
    assert [s.name for s in hub.order_by_reachability(sources, reachable)] == [
        "hf-mirror",
        "modelscope",
        "hf",
    ]


def test_the_users_hf_token_never_goes_to_a_mirror_auto_mode_picked():
    assert clients._hf_token(hub.Source("hf-mirror", hub.HF_MIRROR_ENDPOINT)) is False


def test_the_users_hf_token_goes_to_a_mirror_the_user_chose():
    assert clients._hf_token(hub.Source("hf-mirror", "https://mirror.corp", explicit=True)) is None


# ---- destinations --------------------------------------------------------------------------------


def test_hf_destination_is_the_hub_cache_snapshot(tmp_path):
    m = hub.build_manifest(HF, "Qwen/Qwen3-8B", "main", "f" * 40, listing())
    assert hub.destination(
        m, None, {"HF_HOME": str(tmp_path)}
    ) == tmp_path / "hub" / "models--Qwen--Qwen3-8B" / "snapshots" / ("f" * 40)


def test_modelscope_destination_is_its_cache_snapshot(tmp_path):
    m = hub.build_manifest(
        hub.Source("modelscope", hub.MODELSCOPE_ENDPOINT), "Qwen/Qwen3-8B", "master", None, listing()
    )
    assert (
        hub.destination(m, None, {"MODELSCOPE_CACHE": str(tmp_path)})
        == tmp_path / "models" / "Qwen--Qwen3-8B" / "snapshots" / "master"
    )


def test_HF_HUB_CACHE_beats_HF_HOME(tmp_path):
    assert hub.hf_cache_dir({"HF_HUB_CACHE": str(tmp_path / "c"), "HF_HOME": str(tmp_path)}) == tmp_path / "c"


def test_free_space_is_read_on_the_nearest_existing_parent(tmp_path):
    assert dl.free_bytes(tmp_path / "not" / "yet" / "there") > 0


# ---- errors and imports --------------------------------------------------------------------------


def test_an_unknown_exception_is_left_as_a_bug():
    assert errors.classify(ZeroDivisionError()) is None


def test_a_full_disk_during_the_transfer_is_exit_23():
    assert errors.classify(OSError(28, "No space left on device")) == ExitCode.DISK_FULL


def test_a_local_model_directory_is_not_downloaded(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["Qwen3ForCausalLM"],
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "vocab_size": 128,
            }
        )
    )
    with pytest.raises(hub.DownloadError, match="local directory"):
        dl.download(str(tmp_path))


def test_tokens_are_taken_out_of_messages():
    env = {"HF_TOKEN": "hf_abcdefghijklmnop", "MODELSCOPE_API_TOKEN": "ms-secret-1234"}
    text = 'body: {"AccessToken": "ms-secret-1234"} Bearer hf_abcdefghijklmnop hf_zzzzzzzzzzzz'
    assert errors.redact(text, env) == 'body: {"AccessToken": "***"} Bearer *** hf_***'


def test_importing_download_and_progress_loads_no_hub_client():
    code = (
        "import sys, qwdeploy.hub.download, qwdeploy.cli.progress; "
        "print([m for m in ('huggingface_hub', 'modelscope', 'modelscope_hub') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
