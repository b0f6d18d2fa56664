"""`qwdeploy export`: the plan `serve` would run, as a systemd unit, a compose file or Kubernetes manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qwdeploy import api
from qwdeploy.api import PlanRequest
from qwdeploy.cli import render
from qwdeploy.cli.app import app, reported_errors
from qwdeploy.cli.options import ModelArg, plan_options
from qwdeploy.errors import ExitCode, QwdeployError

FormatArg = Annotated[str, typer.Argument(metavar="FORMAT", help="systemd, compose or k8s.")]
OutputOpt = Annotated[
    str | None, typer.Option("--output", "-o", metavar="FILE", help="Write to this file instead of stdout.")
]
NameOpt = Annotated[
    str | None,
    typer.Option("--name", metavar="NAME", help="Service / Deployment name (default: from the model, e.g. qwen3-8b)."),
]
PortOpt = Annotated[int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="Port vLLM listens on.")]
ImageOpt = Annotated[
    str | None,
    typer.Option(
        "--image", metavar="IMAGE", help="Container image (compose, k8s; default vllm/vllm-openai of the planned vLLM)."
    ),
]
ApiKeyOpt = Annotated[
    bool,
    typer.Option(
        "--api-key/--no-api-key", help="Require an API key, read from a credential / secret at start (never inline)."
    ),
]
CachePvcOpt = Annotated[
    str, typer.Option("--cache-pvc", metavar="NAME", help="k8s: PersistentVolumeClaim holding the Hugging Face cache.")
]
CompileCachePvcOpt = Annotated[
    str | None,
    typer.Option(
        "--compile-cache-pvc",
        metavar="NAME",
        help="k8s: PersistentVolumeClaim for vLLM's compile cache, so a restarted pod starts warm "
        "(default: <name>-compile-cache).",
    ),
]
VllmBinOpt = Annotated[
    str | None,
    typer.Option(
        "--vllm-bin",
        metavar="PATH",
        help="systemd: the vllm executable ExecStart runs (default: /opt/vllm/bin/vllm, a venv the unit's "
        "install steps create).",
    ),
]
NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", metavar="NAME", help="k8s: namespace of the manifests.")
]
HpaOpt = Annotated[bool, typer.Option("--hpa", help="k8s: add a HorizontalPodAutoscaler on vllm:num_requests_waiting.")]
MaxReplicasOpt = Annotated[int, typer.Option("--max-replicas", metavar="N", min=1, help="k8s --hpa: most replicas.")]


@app.command(short_help="Write the plan as a systemd unit, compose file or k8s manifests.")
@plan_options(exclude=("compile_cache",))
def export(  # noqa: PLR0913 - Typer declares each option as a parameter
    fmt: FormatArg,
    model: ModelArg,
    request: PlanRequest,
    output: OutputOpt = None,
    name: NameOpt = None,
    port: PortOpt = 8000,
    image: ImageOpt = None,
    api_key: ApiKeyOpt = True,
    cache_pvc: CachePvcOpt = "huggingface-cache",
    compile_cache_pvc: CompileCachePvcOpt = None,
    vllm_bin: VllmBinOpt = None,
    namespace: NamespaceOpt = None,
    hpa: HpaOpt = False,
    max_replicas: MaxReplicasOpt = 4,
) -> None:
    """Write MODEL's plan as a systemd unit, a docker compose file or Kubernetes manifests.

    The same plan as `plan` and `serve`; output is deterministic. With --nodes, `k8s` writes a
    LeaderWorkerSet (Ray head + workers). --no-api-key with vLLM on every interface is warned
    about on stderr and in the file. Exit codes: 0 written; 4 written, but the plan misses a
    profile target (context or concurrency; said on stderr); 3 the plan does not fit, nothing
    starts (nothing written); 1 an error you can fix; 2 usage.
    """
    from qwdeploy import export as exports

    opts = exports.ExportOptions(
        name=name,
        port=port,
        image=image,
        api_key=api_key,
        cache_pvc=cache_pvc,
        compile_cache_pvc=compile_cache_pvc,
        vllm_bin=vllm_bin,
        namespace=namespace,
        hpa=hpa,
        max_replicas=max_replicas,
    )
    with reported_errors():
        if fmt not in exports.FORMATS:
            raise QwdeployError(
                f"unknown export format {fmt!r}", exit_code=ExitCode.USAGE, hint="one of: " + ", ".join(exports.FORMATS)
            )
        plan = api.plan(request)
        if not plan.fits:
            raise QwdeployError(
                f"{plan.model} does not fit this plan; nothing exported",
                hint=f"see `qwdeploy plan {model} ...` for why and the alternatives",
                exit_code=ExitCode.DOES_NOT_FIT,
            )
        text = exports.render(fmt, plan, opts)
        warning = exports.exposure_warning(opts)
        if warning:
            render.warning(warning)
        _write(text, output)
    render.profile_misses(plan)
    if not plan.meets_profile:
        raise typer.Exit(int(ExitCode.MISSES_PROFILE))


def _write(text: str, output: str | None) -> None:
    if not output:
        typer.echo(text, nl=False)
        return
    try:
        Path(output).write_text(text)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise QwdeployError(f"cannot write {output!r}: {getattr(e, 'strerror', None) or e}") from None
    render.info(f"Wrote {output}")
