"""Verdicts that mean what they say: fits, meets_profile, exit codes 0/4/3, honest alternatives and notes.

`fits`: the printed command starts on those GPUs and serves one sequence of its max_model_len.
`meets_profile`: it fits and holds the profile's context and concurrency (`profile_misses` says
which it misses). `plan` exits 0 when both hold, 4 when it only fits, 3 when nothing starts.
"""

import json
import re
from pathlib import Path

import pytest

from qwdeploy.cli import app
from qwdeploy.errors import ExitCode
from qwdeploy.planning.kv import BLOCK_SIZE

README = Path(__file__).resolve().parent.parent / "README.md"
CASES = [
    ["Qwen/Qwen3-8B", "--gpu", "H100"],
    ["Qwen/Qwen3-14B-AWQ", "--gpu", "L4"],
    ["Qwen/Qwen3-8B", "--gpu", "RTX-3090"],
    ["Qwen/Qwen3-8B", "--gpu", "L40S"],
    ["Qwen/Qwen3-32B", "--gpu", "L40S"],
    ["Qwen/Qwen3-32B", "--profile", "throughput", "--gpu", "L40S", "--num-gpus", "2"],
]


def _plan(runner, *args) -> tuple[int, dict]:
    result = runner.invoke(app, ["plan", *args, "--json"])
    return result.exit_code, json.loads(result.stdout)


# ---- the definitions -----------------------------------------------------------------------


@pytest.mark.parametrize("args", CASES, ids=lambda a: " ".join(a))
def test_a_plan_that_fits_holds_one_sequence_of_its_max_model_len(runner, args):
    _, plan = _plan(runner, *args)
    assert not plan["fits"] or plan["num_gpu_blocks"] * BLOCK_SIZE >= plan["max_model_len"]


@pytest.mark.parametrize("args", CASES, ids=lambda a: " ".join(a))
def test_meets_profile_is_a_fitting_plan_that_misses_nothing(runner, args):
    _, plan = _plan(runner, *args)
    assert plan["meets_profile"] == (plan["fits"] and not plan["profile_misses"])


@pytest.mark.parametrize("args", CASES, ids=lambda a: " ".join(a))
def test_the_exit_code_is_0_meets_4_fits_3_does_not_fit(runner, args):
    code, plan = _plan(runner, *args)
    assert code == (0 if plan["meets_profile"] else 4 if plan["fits"] else 3)


def test_a_plan_that_meets_its_profile_exits_0_with_no_misses(runner):
    code, plan = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100")
    assert (code, plan["meets_profile"], plan["profile_misses"]) == (0, True, [])


def test_the_readme_exit_code_table_lists_every_exit_code():
    table = {int(m) for m in re.findall(r"^\| (\d+) \|", README.read_text(), flags=re.M)}
    assert table == {int(c) for c in ExitCode}


# ---- below the profile's concurrency: the most useful plan --------------------------------


def test_14b_awq_on_an_l4_fits_at_the_profiles_context_and_exits_4(runner):
    code, plan = _plan(runner, "Qwen/Qwen3-14B-AWQ", "--gpu", "L4")
    assert (code, plan["fits"], plan["max_model_len"]) == (4, True, 32768)


def test_14b_awq_on_an_l4_says_it_misses_the_concurrency_only(runner):
    _, plan = _plan(runner, "Qwen/Qwen3-14B-AWQ", "--gpu", "L4")
    assert len(plan["profile_misses"]) == 1 and "the chat profile wants 8" in plan["profile_misses"][0]


def test_8b_on_an_rtx_3090_plans_the_longest_context_one_sequence_fits(runner):
    _, plan = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "RTX-3090")
    # the KV cache's longest sequence, in the planner's readable steps of 1024 tokens
    assert plan["max_model_len"] == plan["num_gpu_blocks"] * BLOCK_SIZE // 1024 * 1024


def test_a_plan_that_keeps_the_concurrency_at_a_shorter_context_says_the_context_is_missed(runner):
    _, plan = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "L40S")
    assert plan["max_concurrency"] >= 8 and plan["profile_misses"] == [
        f"max_model_len {plan['max_model_len']} is below the chat profile's 32768"
    ]


def test_a_plan_below_its_profile_offers_the_context_that_keeps_the_concurrency(runner):
    _, plan = _plan(runner, "Qwen/Qwen3-14B-AWQ", "--gpu", "L4")
    keeps = [a for a in plan["alternatives"] if "keeps the chat profile's 8 sequences" in a["summary"]]
    assert keeps and keeps[0]["max_concurrency"] >= 8 and keeps[0]["meets_profile"] is False


# ---- alternatives keep the pins ----------------------------------------------------------


def test_alternatives_keep_a_pinned_context_unless_they_say_they_change_it(runner):
    _, plan = _plan(runner, "Qwen/Qwen3-32B", "--gpu", "L40S", "--max-model-len", "16384")
    kept = [a for a in plan["alternatives"] if "changes --max-model-len" not in a["summary"]]
    assert kept and all(a["max_model_len"] == 16384 for a in kept)


def test_an_alternative_that_changes_the_pinned_tensor_parallel_size_says_so(runner):
    _, plan = _plan(runner, "Qwen/Qwen3-32B", "--gpu", "L40S", "-tp", "1")
    more = [a for a in plan["alternatives"] if a["tensor_parallel_size"] > 1]
    assert more and all("changes --tensor-parallel-size 1" in a["summary"] for a in more)


def test_an_alternative_with_other_weights_says_it_replaces_the_weights_asked_for(runner):
    _, plan = _plan(runner, "Qwen/Qwen3-14B-AWQ", "--gpu", "L4")
    fp8 = next(a for a in plan["alternatives"] if a["model"] == "Qwen/Qwen3-14B-FP8")
    assert "instead of the int4 weights asked for" in fp8["summary"]


# ---- idle GPUs, nodes not needed ---------------------------------------------------------------


def test_a_plan_that_leaves_gpus_idle_says_so(runner):
    _, plan = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", "--num-gpus", "4")
    assert any(n.startswith("Uses 1 of the 4 GPUs") for n in plan["notes"])


def test_a_plan_that_leaves_gpus_idle_offers_one_that_uses_them(runner):
    _, plan = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", "--num-gpus", "4")
    every = [a for a in plan["alternatives"] if a["tensor_parallel_size"] == 4]
    assert every and every[0]["max_concurrency"] > plan["max_concurrency"]


def test_idle_gpus_leave_the_command_unchanged(runner):
    _, one = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100")
    _, four = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", "--num-gpus", "4")
    assert four["vllm_args"] == one["vllm_args"]


MULTI = ["Qwen/Qwen3-235B-A22B", "--gpu", "H100", "--nodes", "2", "--num-gpus-per-node", "8"]


def test_a_two_node_plan_that_one_node_meets_says_so(runner):
    _, plan = _plan(runner, *MULTI)
    assert any(n.startswith("One node of 8 × H100-SXM-80GB already meets the profile") for n in plan["notes"])


def test_a_two_node_plan_that_one_node_meets_offers_the_one_node_plan(runner):
    _, plan = _plan(runner, *MULTI)
    one = [a for a in plan["alternatives"] if a["pipeline_parallel_size"] == 1]
    assert one and one[0]["meets_profile"] and one[0]["tensor_parallel_size"] == 8


# ---- notes true for the GPU and the request ---------------------------------------------------


def test_fp8_weights_on_ampere_get_no_deep_gemm_note(runner):
    _, plan = _plan(runner, "Qwen/Qwen3-8B-FP8", "--gpu", "A100")
    assert not any("DeepGEMM" in n for n in plan["notes"])


def test_fp8_weights_on_hopper_keep_the_deep_gemm_note(runner):
    _, plan = _plan(runner, "Qwen/Qwen3-8B-FP8", "--gpu", "H100")
    assert any("DeepGEMM" in n for n in plan["notes"])


def test_a_pinned_fp8_kv_cache_on_ampere_says_vllm_runs_it_through_flashinfer(runner):
    _, plan = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "A100", "--kv-cache-dtype", "fp8")
    assert any("through FlashInfer" in n for n in plan["notes"])


def test_a_pinned_fp8_kv_cache_on_hopper_gets_no_flashinfer_note(runner):
    _, plan = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", "--kv-cache-dtype", "fp8")
    assert not any("FlashInfer" in n for n in plan["notes"])


@pytest.mark.parametrize("args", [["Qwen/Qwen3-14B-AWQ"], ["Qwen/Qwen3-14B", "--dtype", "fp8"]])
def test_weights_the_user_chose_are_not_explained_by_the_profile(runner, args):
    _, plan = _plan(runner, *args, "--gpu", "H100")
    reason = next(c["reason"] for c in plan["choices"] if c["key"] == "model")
    assert "prefers" not in reason and "the weights asked for" in reason


# ---- the other commands ------------------------------------------------------------------------


def test_export_of_a_plan_below_its_profile_writes_it_and_exits_4(runner):
    result = runner.invoke(app, ["export", "compose", "Qwen/Qwen3-14B-AWQ", "--gpu", "L4"])
    assert result.exit_code == 4 and "vllm/vllm-openai" in result.stdout


def test_export_of_a_plan_below_its_profile_warns_on_stderr(runner):
    result = runner.invoke(app, ["export", "compose", "Qwen/Qwen3-14B-AWQ", "--gpu", "L4"])
    assert "misses the chat profile" in result.stderr
