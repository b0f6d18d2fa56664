"""`qwdeploy serve`: plan, weights, start vLLM, wait until it answers, report plan vs actual, supervise."""

from __future__ import annotations

from typing import Annotated

import typer

from qwdeploy.api import PlanRequest
from qwdeploy.cli.app import app
from qwdeploy.cli.options import ModelArg, plan_options

VllmArgs = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[-- VLLM_ARGS...]",
        help="More vLLM arguments after --, passed as they are (last, so they win).",
        show_default=False,
    ),
]
HeadAddressOpt = Annotated[
    str,
    typer.Option(
        "--head-address",
        metavar="ADDRESS",
        help="With --nodes: this (head) node's address, for the workers' `ray start --address`.",
    ),
]
HostOpt = Annotated[
    str, typer.Option("--host", metavar="ADDRESS", help="Address vLLM binds (0.0.0.0 for every interface).")
]
PortOpt = Annotated[int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="Port vLLM listens on.")]
ApiKeyFileOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key-file",
        metavar="FILE",
        help="File holding the API key clients must send (passed to vLLM as VLLM_API_KEY; never printed).",
    ),
]
NoDownloadOpt = Annotated[
    bool, typer.Option("--no-download", help="Do not fetch the weights; vLLM finds (or fetches) them itself.")
]
DryRunOpt = Annotated[
    bool,
    typer.Option("--dry-run", help="Print the exact vLLM command and environment (secrets masked); start nothing."),
]
ReadyTimeoutOpt = Annotated[
    float, typer.Option("--ready-timeout", metavar="SECONDS", min=1, help="Seconds to wait for vLLM to answer.")
]
LogFileOpt = Annotated[
    str | None,
    typer.Option("--log-file", metavar="FILE", help="vLLM's output (default: <cache>/logs/serve-<model>-<time>.log)."),
]
CacheDirOpt = Annotated[
    str | None,
    typer.Option(
        "--cache-dir",
        metavar="DIR",
        help="Root of qwdeploy's caches (compile caches, logs, calibration; default $QWDEPLOY_CACHE_DIR, "
        "else ~/.cache/qwdeploy).",
    ),
]
ServeJsonOpt = Annotated[
    bool, typer.Option("--json", help="With --dry-run: the command, environment and plan as JSON.")
]


@app.command(
    short_help="Plan, download, start vLLM and supervise it.", context_settings={"allow_interspersed_args": True}
)
@plan_options(exclude=("compile_cache",))
def serve(  # noqa: PLR0913 - Typer declares each option as a parameter
    model: ModelArg,
    request: PlanRequest,
    vllm_args: VllmArgs = None,
    head_address: HeadAddressOpt = "HEAD_IP",
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key_file: ApiKeyFileOpt = None,
    no_download: NoDownloadOpt = False,
    dry_run: DryRunOpt = False,
    ready_timeout: ReadyTimeoutOpt = 1800.0,
    log_file: LogFileOpt = None,
    cache_dir: CacheDirOpt = None,
    as_json: ServeJsonOpt = False,
) -> None:
    """Serve MODEL with vLLM under the plan: weights, start, wait until it answers, then supervise.

    Prints the endpoint, the served model name and the seconds to ready, then what vLLM really
    got next to the plan (recorded for `plan`'s calibration). Ctrl-C / SIGTERM stop vLLM's whole
    process group. Exit codes: 130 stopped by Ctrl-C / SIGTERM / SIGHUP (vLLM stopped cleanly),
    0 --dry-run, 3 the plan does not fit (nothing starts; a plan that misses its profile's context
    or concurrency is served, with a warning), 30 vLLM is not installed, 31 vLLM failed to start,
    was not ready in time or exited while serving, 1 an error you can fix, 2 usage.
    """
    from qwdeploy.cli import serving  # vLLM's supervisor and the hub clients load only for a serve

    serving.run(
        request,
        serving.ServeArgs(
            vllm_args=tuple(vllm_args or ()),
            head_address=head_address,
            host=host,
            port=port,
            api_key_file=api_key_file,
            no_download=no_download,
            dry_run=dry_run,
            ready_timeout=ready_timeout,
            log_file=log_file,
            cache_dir=cache_dir,
            as_json=as_json,
        ),
    )
