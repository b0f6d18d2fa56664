"""Any Qwen3 repo on a hub: `plan`, `download` and `serve --dry-run` with the real huggingface_hub
and modelscope clients against the loopback hub (tests/hubserver.py), which serves checkpoints
tests/checkpoints.py writes in each format people publish."""

from __future__ import annotations

import json
import shlex

import pytest
from checkpoints import TINY, checkpoint_bytes, repo
from hubserver import HubServer, RepoFile

from qwdeploy.cli import app
from qwdeploy.errors import ExitCode
from qwdeploy.gpus import local as local_gpus
from qwdeploy.gpus.specs import named
from qwdeploy.planning import catalog
from qwdeploy.vllm import install

pytestmark = pytest.mark.timeout(60)

LAYOUTS = {  # one repo per layout: a fine-tune, AWQ, GPTQ (its quant config apart), FP8 dynamic, bnb
    "acme/Qwen3-tiny-sft": (TINY, "bf16", None),
    "acme/Qwen3-tiny-AWQ": (TINY, "awq", None),
    "acme/Qwen3-tiny-GPTQ-Int4": (TINY, "gptq-int4", "quantize_config.json"),
    "acme/Qwen3-tiny-FP8-dynamic": (TINY, "ct-fp8-dynamic", None),
    "acme/Qwen3-tiny-bnb-4bit": (TINY, "bnb-nf4", None),
}
AWQ_8B = catalog.config_json(catalog.get("Qwen/Qwen3-8B-AWQ"))
SFT_8B = catalog.config_json(catalog.get("Qwen/Qwen3-8B"))


@pytest.fixture(scope="module")
def hub():
    with HubServer() as server:
        for repo_id, (config, fmt, quant_file) in LAYOUTS.items():
            server.add(repo_id, repo(config, fmt, quant_file=quant_file))
        server.add("acme/Qwen3-8B-AWQ-headers", repo(AWQ_8B, "awq", shards=3, data=False))
        server.add("acme/Qwen3-8B-sft-headers", repo(SFT_8B, "bf16", shards=4, data=False))
        server.add("acme/Llama-tiny", repo({**TINY, "architectures": ["LlamaForCausalLM"]}, "bf16"))
        server.add(
            "acme/Qwen3-tiny-GGUF", {"qwen3-q4_k_m.gguf": RepoFile("qwen3-q4_k_m.gguf", b"GGUF" * 256, lfs=True)}
        )
        yield server


def plan(runner, hub, model, *args, source="hf"):
    result = runner.invoke(app, ["plan", model, "--source", source, "--endpoint", hub.url, "--json", *args])
    assert result.exit_code in (0, 3), result.stderr
    return json.loads(result.stdout)


def weights(plan_json) -> int:
    return plan_json["memory_per_gpu"]["weights_bytes"]


def config_only_plan(runner, tmp_path, repo_id, *args):
    """The plan of the same config.json without its weights: the catalog's arithmetic."""
    config, fmt, quant_file = LAYOUTS[repo_id]
    files = repo(config, fmt, quant_file=quant_file)
    for name in ("config.json", quant_file):
        if name:
            (tmp_path / name).write_bytes(files[name].data)
    result = runner.invoke(app, ["plan", str(tmp_path), "--json", *args])
    return json.loads(result.stdout)


# ---- plan, download, serve --dry-run for each layout ---------------------------------------------


@pytest.mark.parametrize("repo_id", LAYOUTS)
def test_plan_reads_a_repo_qwdeploy_does_not_ship(runner, hub, env, repo_id):
    assert plan(runner, hub, repo_id, "--gpu", "H100")["model"] == repo_id


@pytest.mark.parametrize("repo_id", LAYOUTS)
def test_download_fetches_a_repo_qwdeploy_does_not_ship(runner, hub, env, repo_id):
    result = runner.invoke(app, ["download", repo_id, "--source", "hf", "--endpoint", hub.url, "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["total_bytes"] == sum(f.size for f in hub.repos[repo_id].values())


def test_download_from_modelscope_fetches_a_repo_qwdeploy_does_not_ship(runner, hub, env):
    result = runner.invoke(app, ["download", "acme/Qwen3-tiny-AWQ", "--source", "modelscope", "--endpoint", hub.url])
    assert result.exit_code == 0, result.stderr
    assert (env / "ms" / "models" / "acme--Qwen3-tiny-AWQ" / "snapshots" / "master" / "config.json").is_file()


@pytest.mark.parametrize("repo_id", LAYOUTS)
def test_serve_dry_run_prints_the_command_for_a_repo_qwdeploy_does_not_ship(runner, hub, env, repo_id, monkeypatch):
    monkeypatch.setattr(local_gpus, "local_gpus", lambda: named("H100", 1))
    monkeypatch.setattr(install, "detect_vllm", lambda: install.VllmInstall("vllm", "0.26.0"))
    result = runner.invoke(app, ["serve", repo_id, "--source", "hf", "--endpoint", hub.url, "--dry-run"])
    assert result.exit_code == 0, result.stderr
    words = shlex.split(result.stdout)
    assert words[words.index("--model") + 1] == repo_id


# ---- the weights: what vLLM holds, from the headers ----------------------------------------------


def test_a_bf16_fine_tune_plans_the_sum_of_its_tensors(runner, hub, env):
    rotary = 4096 * 128 * 2  # cos/sin cache: max_position_embeddings × head_dim, 16-bit
    p = plan(runner, hub, "acme/Qwen3-tiny-sft", "--gpu", "H100")
    assert weights(p) - rotary == checkpoint_bytes(TINY, "bf16")


@pytest.mark.parametrize("repo_id", [r for r in LAYOUTS if r != "acme/Qwen3-tiny-sft"])
@pytest.mark.parametrize("gpu", ["H100", "A100-80GB", "L40S"])
def test_a_quantized_repo_plans_what_its_config_plans_on_that_gpu(runner, hub, env, tmp_path, repo_id, gpu):
    from_headers = plan(runner, hub, repo_id, "--gpu", gpu)
    assert weights(from_headers) == weights(config_only_plan(runner, tmp_path, repo_id, "--gpu", gpu))


def test_a_real_sized_awq_repo_plans_what_the_catalog_plans_for_qwens_awq_on_an_h100(runner, hub, env):
    remote = plan(runner, hub, "acme/Qwen3-8B-AWQ-headers", "--gpu", "H100")
    shipped = json.loads(runner.invoke(app, ["plan", "Qwen/Qwen3-8B-AWQ", "--gpu", "H100", "--json"]).stdout)
    assert weights(remote) == weights(shipped)


def test_awq_on_an_h100_holds_more_than_the_checkpoints_bytes(runner, hub, env):
    # Machete keeps zero points as 16-bit -scale·zp where the checkpoint packs them in 4 bits
    remote = plan(runner, hub, "acme/Qwen3-8B-AWQ-headers", "--gpu", "H100")
    assert weights(remote) > checkpoint_bytes(AWQ_8B, "awq")


def test_a_real_sized_fine_tune_plans_what_the_catalog_plans_for_its_base(runner, hub, env):
    remote = plan(runner, hub, "acme/Qwen3-8B-sft-headers", "--gpu", "H100")
    shipped = json.loads(runner.invoke(app, ["plan", "Qwen/Qwen3-8B", "--gpu", "H100", "--json"]).stdout)
    assert weights(remote) == weights(shipped)


def test_planning_reads_headers_never_weights(runner, hub, env):
    plan(runner, hub, "acme/Qwen3-8B-sft-headers", "--gpu", "H100")
    shards = [f for f in hub.repos["acme/Qwen3-8B-sft-headers"] if f.endswith(".safetensors")]
    assert all(hub.served[s] < 64 * 1024 for s in shards)  # each shard is ~4 GB


def test_a_header_is_read_as_its_length_then_its_json(runner, hub, env):
    plan(runner, hub, "acme/Qwen3-8B-AWQ-headers", "--gpu", "H100")
    shard = hub.repos["acme/Qwen3-8B-AWQ-headers"]["model-00001-of-00003.safetensors"]
    n = int.from_bytes(shard.data[:8], "little")
    assert hub.ranges(shard.path)[-2:] == ["bytes=0-7", f"bytes=8-{8 + n - 1}"]


# ---- sources, endpoints, the cache -----------------------------------------------------------------


def test_modelscope_serves_the_same_facts(runner, hub, env):
    hf = plan(runner, hub, "acme/Qwen3-tiny-AWQ", "--gpu", "H100")
    ms = plan(runner, hub, "acme/Qwen3-tiny-AWQ", "--gpu", "H100", source="modelscope")
    assert weights(ms) == weights(hf)


def test_hf_endpoint_from_the_environment_is_where_facts_come_from(runner, hub, env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    result = runner.invoke(app, ["plan", "acme/Qwen3-tiny-sft", "--gpu", "H100", "--json"])
    assert f"hf-mirror ({hub.url})" in json.loads(result.stdout)["notes"][0]


def test_modelscope_endpoint_from_the_environment_is_where_facts_come_from(runner, hub, env, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.url)
    result = runner.invoke(app, ["plan", "acme/Qwen3-tiny-sft", "--gpu", "H100", "--json"])
    assert f"modelscope ({hub.url})" in json.loads(result.stdout)["notes"][0]


def test_the_notes_say_where_the_facts_came_from(runner, hub, env):
    note = plan(runner, hub, "acme/Qwen3-tiny-AWQ", "--gpu", "H100")["notes"][0]
    assert note.startswith("acme/Qwen3-tiny-AWQ at 0123456789ab: facts read from hf")
    assert "model-00002-of-00002.safetensors (header)" in note


def test_a_plan_once_online_works_offline(runner, hub, env, monkeypatch):
    online = plan(runner, hub, "acme/Qwen3-tiny-AWQ", "--gpu", "H100")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.down = True
    try:
        offline = plan(runner, hub, "acme/Qwen3-tiny-AWQ", "--gpu", "H100")
    finally:
        hub.down = False
    assert weights(offline) == weights(online) and "qwdeploy's cache (offline)" in offline["notes"][0]


def test_an_unreachable_hub_falls_back_to_the_cached_facts(runner, hub, env):
    online = plan(runner, hub, "acme/Qwen3-tiny-sft", "--gpu", "H100")
    hub.down = True
    try:
        again = plan(runner, hub, "acme/Qwen3-tiny-sft", "--gpu", "H100")
    finally:
        hub.down = False
    assert weights(again) == weights(online)


def test_offline_without_cached_facts_is_a_network_error_with_a_hint(runner, hub, env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["plan", "acme/Qwen3-tiny-sft", "--gpu", "H100"])
    assert result.exit_code == ExitCode.NETWORK and "plan it once online" in result.stderr


def test_a_shipped_model_is_planned_without_the_hub(runner, hub, env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    before = len(hub.log)
    assert runner.invoke(app, ["plan", "Qwen/Qwen3-8B", "--gpu", "H100"]).exit_code == 0
    assert len(hub.log) == before


# ---- what vLLM needs told, and refusals --------------------------------------------------------------


def test_a_quant_config_in_its_own_file_adds_the_quantization_flag(runner, hub, env):
    args = plan(runner, hub, "acme/Qwen3-tiny-GPTQ-Int4", "--gpu", "H100")["vllm_args"]
    assert args[args.index("--quantization") + 1] == "gptq"


def test_bitsandbytes_refuses_tensor_parallelism(runner, hub, env):
    result = runner.invoke(
        app, ["plan", "acme/Qwen3-tiny-bnb-4bit", "--gpu", "H100", "--num-gpus", "2", "-tp", "2", "--endpoint", hub.url]
    )
    assert result.exit_code == ExitCode.ERROR and "tensor parallelism" in result.stderr


def test_another_architecture_is_refused(runner, hub, env):
    result = runner.invoke(app, ["plan", "acme/Llama-tiny", "--gpu", "H100", "--endpoint", hub.url])
    assert result.exit_code == ExitCode.ERROR and "not a Qwen3 architecture" in result.stderr


def test_another_architecture_is_not_downloaded_nor_its_headers_read(runner, hub, env):
    before = len(hub.requests)
    result = runner.invoke(app, ["download", "acme/Llama-tiny", "--endpoint", hub.url])
    assert result.exit_code == ExitCode.ERROR
    assert not any(path.endswith(".safetensors") for _, path, _ in hub.requests[before:])


def test_a_gguf_repo_is_refused_naming_what_runs(runner, hub, env):
    result = runner.invoke(app, ["plan", "acme/Qwen3-tiny-GGUF", "--gpu", "H100", "--endpoint", hub.url])
    assert result.exit_code == ExitCode.ERROR and "GGUF" in result.stderr and "safetensors" in result.stderr


def test_a_repo_the_hub_does_not_have_is_exit_20(runner, hub, env):
    result = runner.invoke(app, ["plan", "acme/nothing-here", "--gpu", "H100", "--endpoint", hub.url])
    assert result.exit_code == ExitCode.NOT_FOUND and "unknown model" in result.stderr


def test_a_dtype_the_repo_does_not_hold_is_refused(runner, hub, env):
    result = runner.invoke(
        app, ["plan", "acme/Qwen3-tiny-AWQ", "--dtype", "fp8", "--gpu", "H100", "--endpoint", hub.url]
    )
    assert result.exit_code == ExitCode.USAGE and "holds int4 weights" in result.stderr


@pytest.fixture
def gated(hub):
    hub.gated, hub.token = True, "hf_" + "g" * 34
    yield hub
    hub.gated, hub.token = False, None


def test_a_gated_repo_without_a_token_is_exit_21(runner, gated, env):
    result = runner.invoke(
        app, ["plan", "acme/Qwen3-tiny-sft", "--gpu", "H100", "--source", "hf", "--endpoint", gated.url]
    )
    assert result.exit_code == ExitCode.UNAUTHORIZED


def test_a_gated_repo_plans_with_the_users_token(runner, gated, env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", gated.token)
    result = runner.invoke(
        app, ["plan", "acme/Qwen3-tiny-sft", "--gpu", "H100", "--source", "hf", "--endpoint", gated.url]
    )
    assert result.exit_code == 0, result.stderr
