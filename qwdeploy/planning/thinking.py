"""Thinking on or off: Qwen's facts per mode, and the vLLM settings that make a plan's choice real. Pure.

Qwen3 (2504) models are hybrid: they think unless the chat template gets `enable_thinking: false`.
vLLM 0.26 sets that server-wide with `--default-chat-template-kwargs '{"enable_thinking": false}'`
(entrypoints/openai/cli_args.py `FrontendArgs.default_chat_template_kwargs`); a request's own
`chat_template_kwargs` still win (renderers/params.py `merge_kwargs`). The qwen3 reasoning parser
reads the same merged kwargs (parser/qwen3.py `Qwen3Parser.__init__`): with thinking off it returns
the whole answer as content, so it stays on and a request that turns thinking on still gets its
reasoning separated. A non-thinking chat template alone is not enough: without the kwargs the
parser assumes thinking and files the answer as reasoning.

The 2507 models are what they are: Instruct-2507 never thinks (no parser, no kwargs), Thinking-2507
always does (its template opens <think>; Qwen's README serves it with the deepseek_r1 parser).

Output budgets are Qwen's recommendations (model cards): thinking answers up to 32,768 tokens
(38,912 for hard math and code; Thinking-2507 81,920 for competition tasks), Instruct-2507 16,384,
hybrid non-thinking 8,192 (the example in Qwen's vLLM guide). A thinking plan aims for a context that
holds the profile's typical prompt plus that budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwdeploy.errors import QwdeployError
from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.profiles import Profile

THINKING_SAMPLING = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}
NON_THINKING_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0}

# Qwen's recommended output budgets: (variant.thinking, thinking on) -> (tokens, tokens for hard tasks)
OUTPUT_TOKENS: dict[tuple[str, bool], tuple[int, int | None]] = {
    ("hybrid", True): (32768, 38912),
    ("hybrid", False): (8192, None),
    ("always", True): (32768, 81920),
    ("never", False): (16384, None),
}
THINKING_OFF_KWARGS = {"enable_thinking": False}


@dataclass(frozen=True)
class Thinking:
    """Whether the served model thinks by default, why, and what that takes."""

    on: bool
    source: str  # what decided it: "profile chat", "--thinking", or the model itself (2507)
    switchable: bool  # a hybrid Qwen3: a request may still turn it on or off
    output_tokens: int  # Qwen's recommended output budget in this mode
    hard_task_output_tokens: int | None
    reasoning_parser: str | None

    @property
    def sampling(self) -> dict[str, Any]:
        """Qwen's recommended sampling defaults for the mode."""
        return dict(THINKING_SAMPLING if self.on else NON_THINKING_SAMPLING)

    @property
    def default_chat_template_kwargs(self) -> dict[str, Any] | None:
        """The server-wide chat-template arguments: thinking off for a hybrid model, else none."""
        return dict(THINKING_OFF_KWARGS) if self.switchable and not self.on else None


def thinking_for(variant: Variant, profile: Profile, pinned: bool | None = None) -> Thinking:
    """The plan's thinking mode: a 2507 model's own, else `--thinking` (pinned), else the profile's."""
    kind = variant.thinking
    if kind == "hybrid":
        on = profile.thinking if pinned is None else pinned
        source = f"profile {profile.name}" if pinned is None else "--thinking " + ("on" if on else "off")
    else:
        on = kind == "always"
        if pinned is not None and pinned != on:
            raise QwdeployError(
                f"{variant.name} {kind} thinks: --thinking {'on' if pinned else 'off'} cannot apply",
                hint="a hybrid Qwen3 model (Qwen/Qwen3-8B, ...) switches; or drop --thinking",
            )
        source = f"{variant.name} {kind} thinks"
    tokens, hard = OUTPUT_TOKENS[(kind, on)]
    return Thinking(on, source, kind == "hybrid", tokens, hard, _parser(kind, profile))


def _parser(kind: str, profile: Profile) -> str | None:
    if kind == "never":
        return None  # Instruct-2507 never thinks
    if kind == "always":
        return "deepseek_r1"  # Thinking-2507 templates open <think> themselves (Qwen's README)
    return profile.reasoning_parser  # the shipped profiles: qwen3; a profile's null is kept


def context_target(profile: Profile, thinking: Thinking) -> int:
    """The context a plan aims for: the profile's, raised when thinking so that the profile's typical
    prompt plus Qwen's thinking budget fits (non-thinking answers fit the profile's own)."""
    if not thinking.on:
        return profile.max_model_len
    return max(profile.max_model_len, profile.typical_prompt_tokens + thinking.output_tokens)


def thinking_notes(thinking: Thinking, profile: Profile, max_model_len: int) -> list[str]:
    """A thinking plan without a parser, or whose context cannot hold a typical prompt plus Qwen's budget."""
    if not thinking.on:
        return []
    notes = []
    if not thinking.reasoning_parser:
        notes.append(
            f"Thinking on without a reasoning parser (profile {profile.name}): the thinking stays in the "
            f"content between <think> tags."
        )
    prompt = profile.typical_prompt_tokens
    if max_model_len < prompt + thinking.output_tokens:
        left = max(0, max_model_len - prompt)
        off = " (--thinking off answers need no such room)" if thinking.switchable else ""
        notes.append(
            f"Thinking on: Qwen recommends up to {thinking.output_tokens:,} output tokens for thinking answers; "
            f"max_model_len {max_model_len:,} leaves {left:,} after a typical {prompt:,}-token prompt, so "
            f"long reasoning is cut short{off}."
        )
    return notes


def thinking_reason(thinking: Thinking) -> str:
    """Why the plan thinks or not, and what that sets."""
    answers = f"answers up to {thinking.output_tokens:,} tokens"
    if thinking.on:
        hard = f" ({thinking.hard_task_output_tokens:,} for hard tasks)" if thinking.hard_task_output_tokens else ""
        parser = (
            f"the {thinking.reasoning_parser} reasoning parser returns the thinking as `reasoning`"
            if thinking.reasoning_parser
            else "no reasoning parser: the thinking stays in the content"
        )
        return f"{thinking.source}; Qwen's thinking sampling, {answers}{hard}; {parser}"
    if thinking.switchable:
        return (
            f"{thinking.source}; --default-chat-template-kwargs turns thinking off server-wide (a request's "
            f"chat_template_kwargs may turn it on); Qwen's non-thinking sampling, {answers}"
        )
    return f"{thinking.source}; Qwen's non-thinking sampling, {answers}"
