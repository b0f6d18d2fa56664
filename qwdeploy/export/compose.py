"""A docker compose file: the official vLLM image, the planned GPUs reserved, a healthcheck."""

from __future__ import annotations

import math
from typing import Any

from qwdeploy.export.common import (
    API_KEY_ENV,
    CONTAINER_HF_HOME,
    CONTAINER_VLLM_CACHE,
    DEFAULT_OPTIONS,
    ExportOptions,
    cold_start_s,
    export_name,
    header,
    image,
    probe_script,
    single_node_only,
    start_env,
    to_yaml,
    vllm_argv,
)
from qwdeploy.planning.plan import Plan


def compose(plan: Plan, opts: ExportOptions = DEFAULT_OPTIONS) -> str:
    """A compose file: the official vLLM image, the planned GPUs reserved, a healthcheck."""
    single_node_only(plan, "compose")
    name = export_name(plan, opts)
    service = _service(plan, opts)
    if opts.api_key:
        service["secrets"] = ["api-key"]
    doc: dict[str, Any] = {"name": name, "services": {name: service}, "volumes": {"vllm-cache": {}}}
    if opts.api_key:
        doc["secrets"] = {"api-key": {"file": "./api-key"}}
    head = header(plan, "docker compose file", opts) + [
        f"# The Hugging Face cache comes from $HF_HOME (default ~/.cache/huggingface): run "
        f"`qwdeploy download {plan.model}` first (HF_HUB_OFFLINE=1 in the container).",
    ]
    if opts.api_key:
        head.append("# The API key is read from ./api-key (chmod 600), mounted as a compose secret.")
    head.append("# Start: docker compose up -d; the healthcheck turns healthy once /v1/models answers.")
    return "\n".join(head) + "\n" + to_yaml(doc)


def _service(plan: Plan, opts: ExportOptions) -> dict[str, Any]:
    entrypoint, probe = _entrypoint_and_probe(opts)
    return {
        "image": image(plan, opts),
        "entrypoint": entrypoint,
        "command": [a.replace("$", "$$") for a in vllm_argv(plan, opts)],
        "environment": {k: v.replace("$", "$$") for k, v in sorted(_env(plan).items())},
        "ports": [f"{opts.port}:{opts.port}"],
        "volumes": [
            f"${{HF_HOME:-${{HOME}}/.cache/huggingface}}:{CONTAINER_HF_HOME}",
            f"vllm-cache:{CONTAINER_VLLM_CACHE}",
        ],
        "ipc": "host",  # vLLM's docs: PyTorch shares tensors between processes through /dev/shm
        "deploy": {"resources": {"reservations": {"devices": [_device(plan)]}}},
        "healthcheck": {
            "test": ["CMD", "python3", "-c", probe.replace("$", "$$")],
            "interval": "30s",
            "timeout": "10s",
            "retries": 3,
            "start_period": f"{math.ceil(2 * cold_start_s(plan))}s",
        },
        "restart": "unless-stopped",  # Docker doubles the delay between restarts (backoff)
    }


def _env(plan: Plan) -> dict[str, str]:
    env = {
        "HF_HOME": CONTAINER_HF_HOME,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CACHE_ROOT": CONTAINER_VLLM_CACHE,
        "VLLM_NO_USAGE_STATS": "1",
        **start_env(plan),
    }
    # CUDA_VISIBLE_DEVICES is not passed: the container sees only the reserved GPUs, renumbered.
    env.update({k: v for k, v in plan.env.items() if k != "CUDA_VISIBLE_DEVICES"})
    return env


def _device(plan: Plan) -> dict[str, Any]:
    device: dict[str, Any] = {"driver": "nvidia"}
    if plan.local and plan.cuda_visible_devices:
        device["device_ids"] = plan.cuda_visible_devices.split(",")
    else:
        device["count"] = plan.tensor_parallel_size
    device["capabilities"] = ["gpu"]
    return device


def _entrypoint_and_probe(opts: ExportOptions) -> tuple[list[str], str]:
    url = f"http://127.0.0.1:{opts.port}/v1/models"
    if not opts.api_key:
        return ["vllm", "serve"], probe_script(url, None)
    script = f'{API_KEY_ENV}="$$(cat /run/secrets/api-key)" || exit 1; export {API_KEY_ENV}; exec vllm serve "$$@"'
    return ["/bin/sh", "-c", script, "vllm"], probe_script(url, "open('/run/secrets/api-key').read().strip()")
