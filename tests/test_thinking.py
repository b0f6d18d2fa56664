"""Thinking on or off: the profile says it, --thinking overrides it, and the plan makes it real
(server-wide chat-template default, parser, sampling, a context with room for Qwen's thinking
budget). The 2507 models are planned as what they are. vLLM itself: tests/test_thinking_e2e.py."""

import json

import pytest
from test_profiles import GOOD

from qwdeploy import PlanRequest, plan
from qwdeploy.cli import app
from qwdeploy.errors import ProfileError, QwdeployError
from qwdeploy.export import ExportOptions, vllm_argv
from qwdeploy.planning import profiles
from qwdeploy.planning.plan import Pins
from qwdeploy.planning.thinking import NON_THINKING_SAMPLING, THINKING_SAMPLING
from qwdeploy.vllm import command

OFF_FLAG = ["--default-chat-template-kwargs", '{"enable_thinking":false}']
H100 = {"gpu": "H100"}


def _plan(model="Qwen/Qwen3-8B", profile="chat", thinking=None, **kw):
    return plan(PlanRequest(model, profile=profile, pins=Pins(thinking=thinking, **kw), **H100))


def _has(args: list[str], flag: list[str]) -> bool:
    return any(args[i : i + len(flag)] == flag for i in range(len(args)))


# ---- the profile key ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "on"), [("chat", True), ("agent", True), ("throughput", False), ("low-latency", False)]
)
def test_shipped_profiles_say_whether_they_think(name, on):
    assert profiles.load(name).thinking is on


@pytest.mark.parametrize(("text", "on"), [("on", True), ("off", False), ('"off"', False), ("false", False)])
def test_a_profile_says_thinking_on_or_off(tmp_path, text, on):
    f = tmp_path / "p.yaml"
    f.write_text(GOOD + f"thinking: {text}\n")
    assert profiles.load(str(f)).thinking is on


def test_a_thinking_value_that_is_not_on_or_off_names_file_key_and_allowed_values(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(GOOD + "thinking: sometimes\n")
    with pytest.raises(ProfileError) as e:
        profiles.load(str(f))
    assert str(f) in e.value.message and "thinking" in e.value.message and e.value.hint == "allowed: on, off"


# ---- off ----------------------------------------------------------------------------------


def test_thinking_off_turns_it_off_server_wide_through_the_chat_template_default():
    assert _has(_plan(profile="throughput").vllm_args, OFF_FLAG)


def test_thinking_off_keeps_the_reasoning_parser_so_a_request_can_still_think():
    assert _plan(profile="throughput").reasoning_parser == "qwen3"


def test_thinking_off_uses_qwens_non_thinking_sampling():
    args = _plan(profile="throughput").vllm_args
    assert json.loads(args[args.index("--override-generation-config") + 1]) == NON_THINKING_SAMPLING


def test_thinking_off_keeps_the_profiles_own_context():
    assert _plan(thinking=False).max_model_len == profiles.load("chat").max_model_len


# ---- on -----------------------------------------------------------------------------------


def test_thinking_on_leaves_the_chat_template_alone():
    assert not any(a == OFF_FLAG[0] for a in _plan().vllm_args)


def test_thinking_on_uses_qwens_thinking_sampling_and_the_qwen3_parser():
    p = _plan()
    assert (p.sampling, p.reasoning_parser) == (THINKING_SAMPLING, "qwen3")


def test_thinking_on_aims_for_a_typical_prompt_plus_qwens_thinking_budget():
    chat = profiles.load("chat")
    assert _plan().max_model_len == chat.typical_prompt_tokens + 32768  # 1024 + 32768 = 33792


def test_thinking_on_without_a_parser_says_the_thinking_stays_in_the_content(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(GOOD + "reasoning_parser: null\nthinking: on\n")
    p = plan(PlanRequest("Qwen/Qwen3-8B", profile=str(f), **H100))
    assert p.reasoning_parser is None and any("stays in the content" in n for n in p.notes)


def test_a_context_too_short_for_thinking_says_so():
    p = _plan(max_model_len=8192)
    assert any("Qwen recommends up to 32,768 output tokens" in n for n in p.notes)


def test_the_plan_gives_thinking_its_reason():
    (choice,) = [c for c in _plan(profile="throughput", thinking=True).choices if c.key == "thinking"]
    assert choice.value == "on" and choice.reason.startswith("--thinking on")


# ---- --thinking overrides the profile -------------------------------------------------------


def test_thinking_flag_on_overrides_a_thinking_off_profile():
    p = _plan(profile="throughput", thinking=True)
    assert p.thinking.on and not _has(p.vllm_args, OFF_FLAG)


def test_thinking_flag_off_overrides_a_thinking_on_profile(runner):
    result = runner.invoke(app, ["plan", "Qwen/Qwen3-8B", "--gpu", "H100", "--thinking", "off", "--json"])
    p = json.loads(result.stdout)
    assert p["thinking"] is False and _has(p["vllm_args"], OFF_FLAG)


def test_thinking_flag_other_than_on_or_off_is_a_usage_error(runner):
    result = runner.invoke(app, ["plan", "Qwen/Qwen3-8B", "--gpu", "H100", "--thinking", "maybe"])
    assert result.exit_code == 2 and "on or off" in result.stderr


# ---- the 2507 models are what they are --------------------------------------------------------


def test_instruct_2507_never_thinks_whatever_the_profile_says():
    p = _plan("Qwen/Qwen3-4B-Instruct-2507")
    assert (p.thinking.on, p.reasoning_parser, p.sampling) == (False, None, NON_THINKING_SAMPLING)


def test_instruct_2507_gets_no_chat_template_default():
    assert not any(a == OFF_FLAG[0] for a in _plan("Qwen/Qwen3-4B-Instruct-2507", profile="throughput").vllm_args)


def test_thinking_2507_always_thinks_with_the_deepseek_r1_parser():
    p = _plan("Qwen/Qwen3-4B-Thinking-2507", profile="throughput")
    assert (p.thinking.on, p.reasoning_parser, p.sampling) == (True, "deepseek_r1", THINKING_SAMPLING)


def test_thinking_2507_budget_names_the_competition_length():
    assert _plan("Qwen/Qwen3-4B-Thinking-2507").thinking.hard_task_output_tokens == 81920


@pytest.mark.parametrize(
    ("model", "thinking"), [("Qwen/Qwen3-4B-Instruct-2507", True), ("Qwen/Qwen3-4B-Thinking-2507", False)]
)
def test_asking_a_2507_model_for_the_other_mode_is_an_error(model, thinking):
    with pytest.raises(QwdeployError, match="cannot apply"):
        _plan(model, thinking=thinking)


# ---- the flag reaches vLLM as one argument ----------------------------------------------------


def test_exports_keep_the_chat_template_default_as_one_argument():
    assert _has(vllm_argv(_plan(profile="throughput"), ExportOptions()), OFF_FLAG)


def test_skip_tokenizer_init_drops_the_chat_template_default():
    args = command.server_args(_plan(profile="throughput"), "cuda", ["--skip-tokenizer-init"])
    assert OFF_FLAG[0] not in args
