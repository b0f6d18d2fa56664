"""Planner profiles: YAML files -> validated `Profile` dataclasses.

A profile says what a deployment is for (context length, concurrency, batch sizes, parsers);
the planner turns it into numbers that fit the GPUs. Keys use vLLM's own names where they are
vLLM settings. Every error names the file and the key, and unknown keys get "did you mean".
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

import yaml

from qwdeploy.errors import ExitCode, ProfileError
from qwdeploy.shipped import profiles_dir

WEIGHT_CHOICES = ("bf16", "fp16", "fp8", "int4", "int8")
KV_CHOICES = ("auto", "fp8")
TP_POLICIES = ("fewest", "most")
REASONING_PARSERS = ("qwen3", "deepseek_r1")
TOOL_PARSERS = ("hermes", "qwen3_xml", "qwen3_coder")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    weights: tuple[str, ...]  # weight formats in order of preference
    kv_cache_dtype: tuple[str, ...]  # KV-cache dtypes in order of preference
    max_model_len: int  # target context
    min_max_model_len: int  # below this the plan does not fit
    min_concurrency: int  # full-length sequences the KV cache must hold
    gpu_memory_utilization: float
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    tensor_parallel: str = "fewest"  # fewest GPUs that meet the profile, or most (latency)
    allow_yarn: bool = False  # extend past the native context with Qwen's YaRN setting
    reasoning_parser: str | None = "qwen3"
    tool_call_parser: str | None = None
    thinking: bool = True  # `thinking: on | off`: hybrid Qwen3 models think by default or not (planning.thinking)
    typical_prompt_tokens: int = 1024
    typical_output_tokens: int = 512
    source: str = ""


_REQUIRED = (
    "weights",
    "kv_cache_dtype",
    "max_model_len",
    "min_concurrency",
    "gpu_memory_utilization",
    "max_num_seqs",
    "max_num_batched_tokens",
)
_KEYS = [f.name for f in fields(Profile) if f.name not in ("name", "source")]


def shipped() -> list[str]:
    """Names of the profiles that come with qwdeploy."""
    folder = profiles_dir()
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load(name_or_path: str) -> Profile:
    """A shipped profile by name, or a YAML file by path."""
    path = Path(os.path.expanduser(name_or_path))
    if name_or_path.endswith((".yaml", ".yml")) or _is_file(path):
        return parse(_read(path), source=str(path), name=path.stem)
    if name_or_path not in shipped():
        close = difflib.get_close_matches(name_or_path, shipped(), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"shipped profiles: {', '.join(shipped())}"
        raise ProfileError(
            f"unknown profile {name_or_path!r}",
            hint=hint + " (or pass a path to a YAML file)",
            exit_code=ExitCode.USAGE,
        )
    text = (profiles_dir() / f"{name_or_path}.yaml").read_text()
    return parse(text, source=f"profiles/{name_or_path}.yaml", name=name_or_path)


def _read(path: Path) -> str:
    """A profile file's text; a missing, unreadable or binary file is a one-line error."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ProfileError(
            f"profile file {path} does not exist",
            hint=f"check the path, or name a shipped profile: {', '.join(shipped())}",
            exit_code=ExitCode.USAGE,
        ) from None
    except UnicodeDecodeError:
        raise ProfileError(f"{path} is not a text file (not UTF-8)", hint="a profile is a YAML file") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise ProfileError(f"cannot read profile file {path!r}: {getattr(e, 'strerror', None) or e}") from None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the filesystem is no file
        return False


def parse(text: str, source: str, name: str) -> Profile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ProfileError(f"{source}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a mapping of keys to values")
    for key in data:
        if key not in _KEYS:
            close = difflib.get_close_matches(str(key), _KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(_KEYS)}"
            raise ProfileError(f"{source}: unknown key {key!r}", hint=hint)
    for key in _REQUIRED:
        if key not in data:
            raise ProfileError(f"{source}: missing key {key!r}")
    check = _Checker(source, data)
    values: dict[str, Any] = dict(
        description=check.text("description", ""),
        weights=check.choices("weights", WEIGHT_CHOICES),
        kv_cache_dtype=check.choices("kv_cache_dtype", KV_CHOICES),
        max_model_len=check.integer("max_model_len", 256, 1_048_576),
        min_concurrency=check.integer("min_concurrency", 1, 100_000),
        gpu_memory_utilization=check.number("gpu_memory_utilization", 0.05, 0.99),
        max_num_seqs=check.integer("max_num_seqs", 1, 65_536),
        max_num_batched_tokens=check.integer("max_num_batched_tokens", 16, 1_048_576),
        enable_prefix_caching=check.boolean("enable_prefix_caching", True),
        enforce_eager=check.boolean("enforce_eager", False),
        tensor_parallel=check.one_of("tensor_parallel", TP_POLICIES, "fewest"),
        allow_yarn=check.boolean("allow_yarn", False),
        reasoning_parser=check.one_of("reasoning_parser", REASONING_PARSERS, "qwen3", nullable=True),
        tool_call_parser=check.one_of("tool_call_parser", TOOL_PARSERS, None, nullable=True),
        thinking=check.switch("thinking", True),
        typical_prompt_tokens=check.integer("typical_prompt_tokens", 1, 1_048_576, 1024),
        typical_output_tokens=check.integer("typical_output_tokens", 1, 1_048_576, 512),
    )
    target = check.integer("max_model_len", 256, 1_048_576)
    values["min_max_model_len"] = check.integer("min_max_model_len", 16, target, min(8192, target))
    mnbt, mns = check.integer("max_num_batched_tokens", 16, 1_048_576), check.integer("max_num_seqs", 1, 65_536)
    if mnbt < mns:
        raise ProfileError(
            f"{source}: max_num_batched_tokens ({mnbt}) must be at least max_num_seqs ({mns})",
            hint="vLLM refuses that combination",
        )
    return Profile(name=name, source=source, **values)


class _Checker:
    """Typed reads of one profile's keys, each error naming the file, key and allowed values."""

    def __init__(self, source: str, data: dict[str, Any]):
        self.source, self.data = source, data

    def _fail(self, key: str, allowed: str) -> NoReturn:
        raise ProfileError(f"{self.source}: {key}: {self.data[key]!r} is not allowed", hint=f"allowed: {allowed}")

    def text(self, key: str, default: str) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            self._fail(key, "a string")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self._fail(key, "true or false")
        return value

    def switch(self, key: str, default: bool) -> bool:
        """on | off (YAML also reads an unquoted on/off, and true/false, as a boolean)."""
        value = self.data.get(key, default)
        if isinstance(value, str) and value.lower() in ("on", "off"):
            return value.lower() == "on"
        if not isinstance(value, bool):
            self._fail(key, "on, off")
        return value

    def integer(self, key: str, low: int, high: int, default: int | None = None) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self._fail(key, f"a whole number from {low} to {high}")
        return value

    def number(self, key: str, low: float, high: float) -> float:
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            self._fail(key, f"a number from {low} to {high}")
        return float(value)

    def one_of(self, key: str, allowed: tuple[str, ...], default: str | None, nullable: bool = False) -> str | None:
        value = self.data.get(key, default)
        if value is None and nullable:
            return None
        if value not in allowed:
            self._fail(key, ", ".join(allowed) + (", null" if nullable else ""))
        return str(value)

    def choices(self, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        value = self.data[key]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or any(v not in allowed for v in items):
            self._fail(key, "one or a list of " + ", ".join(allowed))
        return tuple(items)
