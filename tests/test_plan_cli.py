"""`qwdeploy plan` as scripts and people use it: JSON keys, exit codes, goldens, errors."""

import json
import os
from pathlib import Path

import pytest
from hubserver import HubServer

from qwdeploy.cli import app
from qwdeploy.errors import ExitCode

GOLDEN = Path(__file__).parent / "golden_plan"
PROFILES = ["chat", "long-context", "throughput", "low-latency", "cost", "agent"]
REQUIRED_KEYS = {
    "model",
    "quantization",
    "dtype",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "max_model_len",
    "gpu_memory_utilization",
    "kv_cache_dtype",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enforce_eager",
    "gpu",
    "memory_per_gpu",
    "kv_cache_tokens",
    "max_concurrency",
    "max_model_len_limit",
    "fits",
    "vllm_args",
    "notes",
    "alternatives",
}


def _json(runner, *args) -> tuple[int, dict]:
    result = runner.invoke(app, ["plan", *args, "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_json_has_every_documented_key(runner):
    code, plan = _json(runner, "Qwen/Qwen3-14B", "--gpu", "H100", "--num-gpus", "1")
    assert code == 0 and plan.keys() >= REQUIRED_KEYS
    assert {"name", "total_bytes", "count"} <= plan["gpu"].keys()
    assert {"weights_bytes", "activation_bytes", "cudagraph_bytes", "non_torch_bytes", "kv_cache_bytes"} <= plan[
        "memory_per_gpu"
    ].keys()


@pytest.mark.parametrize("profile", PROFILES)
def test_vllm_argv_of_each_shipped_profile_matches_its_golden(runner, profile):
    gpus = ["--gpu", "H100", "--num-gpus", "2"]
    code, plan = _json(runner, "Qwen/Qwen3-32B", "--profile", profile, *gpus)
    golden = GOLDEN / f"{profile}.json"
    if os.environ.get("QWDEPLOY_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(plan["vllm_args"], indent=1) + "\n")
    assert plan["vllm_args"] == json.loads(golden.read_text())


def test_table_and_json_come_from_the_same_plan(runner):
    table = runner.invoke(app, ["plan", "Qwen/Qwen3-8B", "--gpu", "L40S"]).stdout
    _, plan = _json(runner, "Qwen/Qwen3-8B", "--gpu", "L40S")
    assert f"{plan['kv_cache_tokens']:,}" in table
    assert "vllm serve Qwen/Qwen3-8B" in table


def test_32b_bf16_on_one_l40s_does_not_fit_and_offers_alternatives(runner):
    code, plan = _json(runner, "Qwen/Qwen3-32B", "--gpu", "L40S")
    assert code == 3 and plan["fits"] is False
    summaries = " ".join(a["summary"] for a in plan["alternatives"])
    assert "fp8" in summaries and "int4" in summaries
    assert any(a["fits"] for a in plan["alternatives"])


def test_cost_profile_prefers_fp8_weights(runner):
    _, plan = _json(runner, "Qwen/Qwen3-32B", "--profile", "cost", "--gpu", "H100")
    assert plan["model"] == "Qwen/Qwen3-32B-FP8" and plan["kv_cache_dtype"] == "fp8"


def test_fewest_gpus_that_meet_the_profile(runner):
    _, plan = _json(runner, "Qwen/Qwen3-32B", "--gpu", "H100", "--num-gpus", "8")
    assert plan["tensor_parallel_size"] == 2


def test_low_latency_uses_every_suitable_gpu(runner):
    _, plan = _json(runner, "Qwen/Qwen3-8B", "--profile", "low-latency", "--gpu", "H100", "--num-gpus", "4")
    assert plan["tensor_parallel_size"] == 4


def test_long_context_turns_on_yarn_through_hf_overrides(runner):
    _, plan = _json(runner, "Qwen/Qwen3-8B", "--profile", "long-context", "--gpu", "H100")
    assert plan["max_model_len"] == 131072
    overrides = json.loads(plan["vllm_args"][plan["vllm_args"].index("--hf-overrides") + 1])
    assert overrides["rope_parameters"]["rope_type"] == "yarn"
    assert overrides["rope_parameters"]["factor"] == 4.0


def test_2507_models_reach_262144_natively(runner):
    _, plan = _json(
        runner,
        "Qwen/Qwen3-30B-A3B-Instruct-2507",
        "--profile",
        "long-context",
        "--gpu",
        "H200",
        "--max-model-len",
        "262144",
    )
    assert plan["fits"] and "--hf-overrides" not in plan["vllm_args"]


def test_pinned_values_are_kept(runner):
    _, plan = _json(
        runner,
        "Qwen/Qwen3-8B",
        "--gpu",
        "H100",
        "--max-model-len",
        "16384",
        "--gpu-memory-utilization",
        "0.8",
        "--max-num-seqs",
        "64",
        "--max-num-batched-tokens",
        "2048",
        "--kv-cache-dtype",
        "fp8",
        "--enforce-eager",
    )
    assert (
        plan["max_model_len"],
        plan["gpu_memory_utilization"],
        plan["max_num_seqs"],
        plan["max_num_batched_tokens"],
        plan["kv_cache_dtype"],
        plan["enforce_eager"],
    ) == (16384, 0.8, 64, 2048, "fp8", True)


def test_every_choice_carries_a_reason(runner):
    _, plan = _json(runner, "Qwen/Qwen3-8B", "--gpu", "A100-80GB")
    assert all(c["reason"] for c in plan["choices"])
    assert {"tensor_parallel_size", "max_model_len", "gpu_memory_utilization"} <= {c["key"] for c in plan["choices"]}


def test_unknown_model_is_one_line_with_close_ids(runner, monkeypatch):
    with HubServer() as hub:  # looked up on the hub (here: the loopback one), where it is not either
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result = runner.invoke(app, ["plan", "Qwen/Qwen3-13B", "--gpu", "H100"])
    assert result.exit_code == ExitCode.NOT_FOUND
    assert "Qwen/Qwen3-14B" in result.stderr and "Traceback" not in result.stderr


def test_unknown_gpu_is_a_one_line_usage_error(runner):
    result = runner.invoke(app, ["plan", "Qwen/Qwen3-8B", "--gpu", "H300"])
    assert result.exit_code == 2 and "unknown GPU" in result.stderr


def test_invalid_pinned_tp_names_the_valid_sizes(runner):
    result = runner.invoke(app, ["plan", "Qwen/Qwen3-14B", "--gpu", "H100", "--num-gpus", "8", "-tp", "5"])
    assert result.exit_code == 1 and "valid sizes: 1, 2, 4, 8" in result.stderr


def test_profile_typo_exits_1_naming_the_key(runner, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(
        "weights: bf16\nkv_cache_dtype: auto\nmax_model_len: 4096\nmin_concurrency: 1\n"
        "gpu_memory_utilization: 0.9\nmax_num_seqs: 8\nmax_num_batched_tokens: 2048\n"
        "tensor_paralel: fewest\n"
    )
    result = runner.invoke(app, ["plan", "Qwen/Qwen3-8B", "--gpu", "H100", "--profile", str(f)])
    assert result.exit_code == 1
    assert "tensor_paralel" in result.stderr and "tensor_parallel" in result.stderr


def test_bad_option_is_a_usage_error(runner):
    assert runner.invoke(app, ["plan", "Qwen/Qwen3-8B", "--gpu-memory-utilization", "3"]).exit_code == 2


def test_a_model_whose_whole_context_is_below_the_profile_minimum_still_fits(runner, tmp_path):
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "max_position_embeddings": 4096,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    code, plan = _json(runner, str(tmp_path), "--gpu", "L4")
    assert code == 0 and plan["max_model_len"] == 4096


def test_weights_that_do_not_fit_keep_the_target_context_in_the_command(runner):
    code, plan = _json(runner, "Qwen/Qwen3-32B", "--gpu", "L40S")
    assert code == 3 and plan["max_model_len"] == 32768
    assert all(a["kv_cache_tokens"] > 0 for a in plan["alternatives"])
