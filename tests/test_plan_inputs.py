"""What a user types is checked, never substituted: GPU names, numbers, --dtype, config.json, contexts."""

import json
from pathlib import Path

import pytest

import qwdeploy
from qwdeploy import PlanRequest
from qwdeploy.cli import app
from qwdeploy.errors import ExitCode, QwdeployError, UnknownModelError
from qwdeploy.gpus.specs import Gpu, GpuSpec, spec
from qwdeploy.planning import catalog, planner, profiles
from qwdeploy.planning.plan import Pins

GiB = 1 << 30


def _plan(runner, *args):
    return runner.invoke(app, ["plan", *args])


# ---- GPU names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["h100", "H100-80GB", "NVIDIA H100 80GB HBM3", "nvidia-h100-sxm", "H100 SXM"])
def test_spelling_variants_of_a_gpu_name_find_that_gpu(name):
    assert spec(name).name == "H100-SXM-80GB"


def test_the_nvidia_smi_name_of_a_geforce_card_is_known():
    assert spec("NVIDIA GeForce RTX 4090").name == "RTX-4090-24GB"


def test_a_gpu_name_that_extends_a_known_one_is_a_usage_error(runner):
    result = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H1000")
    assert result.exit_code == ExitCode.USAGE and "unknown GPU 'H1000'" in result.stderr


def test_an_unknown_gpu_name_names_the_closest_known_ones(runner):
    assert "H100-SXM-80GB" in _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H1000").stderr


def test_the_94gb_h100_is_the_h100_nvl(runner):
    plan = json.loads(_plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100-94GB", "--json").stdout)
    assert plan["gpu"]["name"] == "H100-NVL-94GB"


def test_the_nvidia_smi_name_of_the_h100_nvl_is_known():
    assert spec("NVIDIA H100 NVL").nvml_total_mib == 95830


def test_a_48gb_rtx_4090_is_not_planned_as_the_24gb_card(runner):
    result = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "RTX-4090-48GB")
    assert result.exit_code == ExitCode.USAGE and "RTX-4090-24GB" in result.stderr and not result.stdout


def test_a_name_several_gpus_start_with_is_an_ambiguous_usage_error(runner):
    result = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "A100-SXM4")
    assert result.exit_code == ExitCode.USAGE and "ambiguous" in result.stderr


# ---- numbers: every numeric plan option of every command ------------------------------------

ZERO = [
    ("--num-gpus", "0"),
    ("--tensor-parallel-size", "0"),
    ("--max-model-len", "0"),
    ("--max-model-len", "-4096"),
    ("--max-num-seqs", "0"),
    ("--max-num-batched-tokens", "0"),
    ("--nodes", "0"),
    ("--num-gpus-per-node", "-1"),
    ("--gpu-memory-utilization", "0"),
    ("--gpu-memory-utilization", "1.5"),
]
# each command's words, and the plan options it does not take (warm plans the local GPUs)
COMMANDS = {
    "plan": (["plan", "Qwen/Qwen3-8B", "--gpu", "H100"], ()),
    "serve": (["serve", "Qwen/Qwen3-8B", "--dry-run"], ("--num-gpus",)),
    "warm": (["warm", "Qwen/Qwen3-8B"], ("--num-gpus", "--nodes", "--num-gpus-per-node")),
    "export": (["export", "compose", "Qwen/Qwen3-8B", "--gpu", "H100"], ()),
}
CASES = [(c, o, v) for c, (_, no) in COMMANDS.items() for o, v in ZERO if o not in no]


@pytest.mark.parametrize("command, option, value", CASES, ids=[f"{c}{o}={v}" for c, o, v in CASES])
def test_a_count_length_or_size_out_of_range_is_a_usage_error_naming_the_flag(runner, command, option, value):
    result = runner.invoke(app, [*COMMANDS[command][0], option, value])
    assert result.exit_code == ExitCode.USAGE and option in result.stderr and "Traceback" not in result.stderr


REQUESTS = [
    ("num_gpus", {"num_gpus": 0}),
    ("nodes", {"nodes": 0}),
    ("gpus_per_node", {"gpus_per_node": -2}),
    ("tensor_parallel_size", {"pins": Pins(tensor_parallel_size=0)}),
    ("max_model_len", {"pins": Pins(max_model_len=0)}),
    ("max_num_seqs", {"pins": Pins(max_num_seqs=0)}),
    ("max_num_batched_tokens", {"pins": Pins(max_num_batched_tokens=-1)}),
    ("gpu_memory_utilization", {"pins": Pins(gpu_memory_utilization=0.0)}),
    ("gpu_memory_utilization", {"pins": Pins(gpu_memory_utilization=1.2)}),
]


@pytest.mark.parametrize("field, values", REQUESTS, ids=[f for f, _ in REQUESTS])
def test_a_library_request_out_of_range_is_refused_naming_the_field(field, values):
    with pytest.raises(QwdeployError, match=field) as e:
        qwdeploy.plan(PlanRequest("Qwen/Qwen3-8B", gpu="H100", **values))
    assert e.value.exit_code == ExitCode.USAGE


# ---- a repo id that fixes the weights, and --dtype -----------------------------------------


def test_a_quantized_repo_id_with_another_dtype_is_a_usage_error(runner):
    result = _plan(runner, "Qwen/Qwen3-14B-AWQ", "--dtype", "fp8", "--gpu", "H100")
    assert result.exit_code == ExitCode.USAGE and "Qwen/Qwen3-14B-AWQ holds int4 weights" in result.stderr


def test_a_quantized_repo_id_with_its_own_dtype_plans_that_repo(runner):
    result = _plan(runner, "Qwen/Qwen3-14B-AWQ", "--dtype", "int4", "--gpu", "H100", "--json")
    assert json.loads(result.stdout)["model"] == "Qwen/Qwen3-14B-AWQ"


def test_a_base_id_with_a_dtype_still_picks_the_official_variant():
    assert catalog.get("Qwen/Qwen3-14B", "fp8").repo_id == "Qwen/Qwen3-14B-FP8"


# ---- config.json facts ----------------------------------------------------------------------

CONFIG = json.loads((Path(__file__).parent / "fixtures" / "tiny-qwen3" / "config.json").read_text())
MOE = {**CONFIG, "architectures": ["Qwen3MoeForCausalLM"], "num_experts": 8, "num_experts_per_tok": 2}
MOE["moe_intermediate_size"] = 128

BAD = [
    ("num_attention_heads", {**CONFIG, "num_attention_heads": 0}),
    ("num_key_value_heads", {**CONFIG, "num_key_value_heads": -2}),
    ("num_hidden_layers", {**CONFIG, "num_hidden_layers": 0}),
    ("hidden_size", {**CONFIG, "hidden_size": "256"}),
    ("vocab_size", {**CONFIG, "vocab_size": 0}),
    ("head_dim", {**CONFIG, "head_dim": 0}),
    ("intermediate_size", {**CONFIG, "intermediate_size": 0}),
    ("max_position_embeddings", {**CONFIG, "max_position_embeddings": 0}),
    ("num_key_value_heads", {**CONFIG, "num_key_value_heads": 3}),  # does not divide 4 heads
    ("num_experts_per_tok", {**MOE, "num_experts_per_tok": 9}),  # more than the 8 experts
    ("moe_intermediate_size", {**MOE, "moe_intermediate_size": 0}),
    ("quantization_config", {**CONFIG, "quantization_config": ["awq"]}),
]


@pytest.mark.parametrize("key, config", BAD, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BAD)])
def test_an_impossible_config_value_is_refused_naming_the_file_and_key(tmp_path, key, config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnknownModelError, match=key) as e:
        catalog.get(str(tmp_path))
    assert str(tmp_path / "config.json") in e.value.message


def test_a_config_that_is_not_a_json_object_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps([CONFIG]))
    with pytest.raises(UnknownModelError, match="not a JSON object"):
        catalog.get(str(tmp_path))


def test_an_impossible_config_is_one_error_line_on_the_command_line(runner, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**CONFIG, "num_attention_heads": 0}))
    result = _plan(runner, str(tmp_path), "--gpu", "L4")
    assert result.exit_code == ExitCode.ERROR and "num_attention_heads" in result.stderr and not result.stdout


def test_a_valid_moe_config_plans(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(MOE))
    assert catalog.get(str(tmp_path)).spec.num_experts_per_tok == 2


# ---- contexts beyond the model ---------------------------------------------------------------


def test_a_context_beyond_yarn_is_a_usage_error_naming_the_longest(runner):
    result = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", "--max-model-len", "10000000")
    assert result.exit_code == ExitCode.USAGE and "at most 131072 tokens" in result.stderr and not result.stdout


def test_a_2507_context_beyond_its_native_262144_is_a_usage_error(runner):
    result = _plan(runner, "Qwen/Qwen3-4B-Instruct-2507", "--gpu", "H200", "--max-model-len", "262160")
    assert result.exit_code == ExitCode.USAGE and "at most 262144 tokens" in result.stderr


def test_the_yarn_limit_itself_plans_without_vllms_long_context_override(runner):
    result = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", "--max-model-len", "131072", "--json")
    assert json.loads(result.stdout)["env"] == {}


# ---- fp8 KV cache where vLLM 0.26 has none --------------------------------------------------

T4 = GpuSpec("T4-16GB", (), 15 * GiB, 15360, "estimated", 320, 65, 0, (7, 5))


def _on_t4(kv: str):
    gpu = Gpu(spec=T4, total_bytes=T4.cuda_total_bytes, free_bytes=T4.cuda_total_bytes, index=0)
    variants = (catalog.get("Qwen/Qwen3-0.6B"),)
    return planner.plan(planner.Problem(variants, profiles.load("chat"), (gpu,), Pins(kv_cache_dtype=kv)))


def test_a_pinned_fp8_kv_cache_on_compute_capability_7_5_is_refused_with_the_reason():
    with pytest.raises(QwdeployError, match="compute capability 7.5") as e:
        _on_t4("fp8")
    assert e.value.exit_code == ExitCode.USAGE and "Triton" in e.value.message


def test_a_16_bit_kv_cache_on_compute_capability_7_5_plans():
    assert _on_t4("auto").kv_cache_dtype == "auto"
