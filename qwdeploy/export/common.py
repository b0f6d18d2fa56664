"""What every export shares: options, names, the vLLM argv, probe timing, the header, YAML. Pure.

Deterministic: fixed key order, no timestamps, no host names; the only inputs are the plan and
`ExportOptions`. Every export runs the same `vllm serve` argv (qwdeploy.vllm.ray.serve_args) and
keeps the API key out of the unit, compose file and manifest: it comes from a credential /
secret at start time and reaches vLLM as its VLLM_API_KEY environment variable (never on the
command line, where `ps` shows it to every user of the machine).
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.planning import startup
from qwdeploy.planning.plan import Plan
from qwdeploy.vllm import ray

API_KEY_ENV = "VLLM_API_KEY"  # vLLM reads it when --api-key is absent (api_server.py)


CONTAINER_HF_HOME = "/root/.cache/huggingface"  # the image runs as root


CONTAINER_VLLM_CACHE = "/root/.cache/vllm"  # VLLM_CACHE_ROOT: torch.compile cache, warm restarts


PROBE_PERIOD_S = 10


LWS_API = "leaderworkerset.x-k8s.io/v1"


def start_env(plan: Plan) -> dict[str, str]:
    """Fork vLLM's engine process instead of `vllm serve`'s spawn: one import of vLLM per start
    instead of two (cache.vllm_env). Multi-node plans start their workers through Ray."""
    return {"VLLM_WORKER_MULTIPROC_METHOD": "fork"} if plan.pipeline_parallel_size == 1 else {}


@dataclass(frozen=True)
class ExportOptions:
    """Deployment settings that are not part of the plan. Defaults suit a single service."""

    name: str | None = None  # unit / service / Deployment name; default: from the model id
    host: str = "0.0.0.0"
    port: int = 8000
    image: str | None = None  # compose and k8s; None: vLLM's image of the version planned for
    api_key: bool = True  # require an API key (VLLM_API_KEY from a credential / secret)
    api_key_file: str = "/etc/qwdeploy/api-key"  # systemd LoadCredential source (root-only file)
    vllm_bin: str | None = None  # systemd: a vllm executable; None: the venv the install steps create
    user: str = "vllm"  # systemd: the service account
    namespace: str | None = None  # k8s
    cache_pvc: str = "huggingface-cache"  # k8s: PVC holding the Hugging Face cache
    compile_cache_pvc: str | None = None  # k8s: PVC for VLLM_CACHE_ROOT; None: <name>-compile-cache
    hpa: bool = False  # k8s: HorizontalPodAutoscaler on vLLM's queue length
    max_replicas: int = 4
    hpa_waiting_requests: int = 4  # target vllm:num_requests_waiting per pod


DEFAULT_OPTIONS = ExportOptions()


def default_name(plan: Plan) -> str:
    """A DNS-1123 label from the model: Qwen/Qwen3-8B -> qwen3-8b."""
    base = PurePosixPath(plan.model.rstrip("/")).name.lower()
    name = re.sub(r"[^a-z0-9-]+", "-", base).strip("-")[:63].rstrip("-")
    return name or "vllm"


def export_name(plan: Plan, opts: ExportOptions) -> str:
    name = opts.name or default_name(plan)
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", name):
        raise QwdeployError(
            f"--name {name!r} is not a valid name",
            hint="lower-case letters, digits and '-', at most 63, e.g. qwen3-8b",
            exit_code=ExitCode.USAGE,
        )
    return name


def vllm_argv(plan: Plan, opts: ExportOptions) -> list[str]:
    """Arguments after `vllm serve`: the plan's, then where to listen."""
    return ray.serve_args(plan) + ["--host", opts.host, "--port", str(opts.port)]


def image(plan: Plan, opts: ExportOptions) -> str:
    """The container image: the one asked for, else vLLM's own of the planned version."""
    return opts.image or plan.vllm.image


def cold_start_s(plan: Plan) -> float:
    """Predicted first start (import, weights from disk, torch.compile, CUDA graphs)."""
    return startup.start_seconds(startup.cold_start_s(plan), warm=False)


def startup_probe_timing(plan: Plan, period_s: int = PROBE_PERIOD_S) -> tuple[int, int]:
    """(initialDelaySeconds, failureThreshold) of the startup probe: nothing answers before
    vLLM's imports are done; after that, allow twice the predicted cold start (5 min at least)."""
    delay = int(startup.cold_start_s(plan)["import_s"])
    budget = max(2 * cold_start_s(plan), 300) - delay
    return delay, math.ceil(budget / period_s)


def exposure_warning(opts: ExportOptions) -> str | None:
    """The warning every export carries (in the file and on stderr) when vLLM listens on every
    interface and asks no API key."""
    if opts.api_key or opts.host not in ("0.0.0.0", "::"):
        return None
    return (
        f"vLLM listens on {opts.host}:{opts.port} without an API key (--no-api-key): anyone who reaches "
        "the port can use the model; keep the port private or drop --no-api-key"
    )


def header(plan: Plan, what: str, opts: ExportOptions = DEFAULT_OPTIONS) -> list[str]:
    gpus = (
        f"{ray.nodes(plan)} nodes × {plan.tensor_parallel_size}"
        if ray.nodes(plan) > 1
        else f"{plan.tensor_parallel_size}"
    )
    return [
        f"# {what} generated by qwdeploy from its plan (vLLM {plan.vllm.version}):",
        f"#   {plan.model} on {gpus} × {plan.gpu.name}, profile {plan.profile.name},",
        f"#   max_model_len {plan.max_model_len}, tensor parallel {plan.tensor_parallel_size}, "
        f"pipeline parallel {plan.pipeline_parallel_size}; predicted cold start "
        f"{cold_start_s(plan):.0f} s.",
    ] + ([f"# WARNING: {warning}."] if (warning := exposure_warning(opts)) else [])


def single_node_only(plan: Plan, fmt: str) -> None:
    if ray.nodes(plan) > 1:
        raise QwdeployError(
            f"export {fmt} writes one machine's service; this plan spans {ray.nodes(plan)} nodes",
            hint="use `export k8s` (a LeaderWorkerSet), or `serve` on the head node with Ray workers on the others",
        )


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # repeated pieces are written out, never &anchors
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(data: Any) -> str:
    return yaml.dump(
        data,
        Dumper=_Dumper,
        sort_keys=False,
        width=10_000,
        default_flow_style=False,
        allow_unicode=True,
    )


def probe_script(url: str, key_expr: str | None) -> str:
    """A python3 one-liner that fails unless GET url answers 2xx (python3 is in the vLLM image)."""
    headers = f"headers={{'Authorization': 'Bearer ' + {key_expr}}}, " if key_expr else ""
    return f"import os, urllib.request as r; r.urlopen(r.Request('{url}', {headers}method='GET'), timeout=5)"


def command_line(plan: Plan, opts: ExportOptions) -> str:
    """The equivalent `vllm serve` line (for people reading an export)."""
    return "vllm serve " + shlex.join(vllm_argv(plan, opts))
