"""A multi-node plan on Ray: the steps on the head and worker nodes, as argv and as text. Pure.

vLLM's own multi-node path, not a home-made one: one vLLM process on the head node with
`--distributed-executor-backend ray`, one Ray worker per node, `tensor_parallel_size` = the GPUs
of a node used, `pipeline_parallel_size` = nodes.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from qwdeploy.planning.plan import Plan
from qwdeploy.planning.stages import RAY_EXECUTOR, RAY_PORT


def nodes(plan: Plan) -> int:
    """Nodes a plan spans: one pipeline stage per node."""
    return plan.pipeline_parallel_size


def serve_args(plan: Plan) -> list[str]:
    """`vllm serve` arguments of a plan, with the Ray executor when it spans nodes."""
    args = list(plan.vllm_args)
    if nodes(plan) > 1 and "--distributed-executor-backend" not in args:
        args += ["--distributed-executor-backend", RAY_EXECUTOR]
    return args


@dataclass(frozen=True)
class RayLaunch:
    """How to start a multi-node plan: a Ray head, N-1 Ray workers, vLLM on the head."""

    nodes: int
    head_address: str
    port: int
    head: tuple[str, ...]  # argv on the head node, first
    worker: tuple[str, ...]  # argv on every other node
    serve: tuple[str, ...]  # argv on the head node once the workers joined (vLLM waits for them)
    env: dict[str, Any]  # environment of vllm serve (plan.env)

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "head_address": self.head_address,
            "port": self.port,
            "head": list(self.head),
            "worker": list(self.worker),
            "serve": list(self.serve),
            "env": dict(self.env),
        }


def ray_launch(plan: Plan, head_address: str, port: int = RAY_PORT) -> RayLaunch:
    """The argv of each step. vLLM creates its placement group on the running cluster and waits
    up to 30 minutes (ray_utils.PG_WAIT_TIMEOUT) for the workers' GPUs to appear."""
    return RayLaunch(
        nodes=nodes(plan),
        head_address=head_address,
        port=port,
        head=("ray", "start", "--head", f"--port={port}", "--disable-usage-stats"),
        worker=("ray", "start", f"--address={head_address}:{port}", "--disable-usage-stats"),
        serve=("vllm", "serve", *serve_args(plan)),
        env=dict(plan.env),
    )


def ray_instructions(plan: Plan, head_address: str, port: int = RAY_PORT) -> str:
    """What a person runs on each node, as text (the `serve` command prints it on the head)."""
    launch = ray_launch(plan, head_address, port)
    env = "".join(f"{k}={shlex.quote(v)} " for k, v in sorted(launch.env.items()))
    workers = launch.nodes - 1
    return "\n".join(
        [
            f"{plan.model}: {launch.nodes} nodes × {plan.tensor_parallel_size} × {plan.gpu.name} "
            f"(tensor parallel {plan.tensor_parallel_size} inside a node, pipeline parallel "
            f"{plan.pipeline_parallel_size} across nodes) on Ray.",
            "Every node: the same vLLM and Ray versions, the model in the same cache path, and",
            "  VLLM_HOST_IP set to the node's own address on the network the nodes share",
            "  (and NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME to that interface if it has several).",
            "1. On the head node:",
            f"     {shlex.join(launch.head)}",
            "2. On the other node:" if workers == 1 else f"2. On each of the other {workers} nodes:",
            f"     {shlex.join(launch.worker)}",
            f"3. Check that `ray status` shows {launch.nodes * plan.tensor_parallel_size} GPUs, then on the head node:",
            f"     {env}{shlex.join(launch.serve)}",
            "",
        ]
    )
