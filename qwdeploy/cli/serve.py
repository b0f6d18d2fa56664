"""`qwdeploy serve`: plan, weights, start vLLM, wait until it answers, report plan vs actual, supervise."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from qwdeploy import api
from qwdeploy.api import PlanRequest
from qwdeploy.cli import render
from qwdeploy.cli.app import app, reported_errors
from qwdeploy.cli.options import ModelArg, plan_options
from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.paths import cache_root
from qwdeploy.planning.plan import Plan
from qwdeploy.vllm import actual, cache, install, launch, ray, records, supervisor
from qwdeploy.vllm.cache import CacheState
from qwdeploy.vllm.command import Launch, ServerOptions
from qwdeploy.vllm.cpu import CpuKv
from qwdeploy.vllm.install import VllmInstall, missing_vllm
from qwdeploy.vllm.log import start_phases
from qwdeploy.vllm.supervisor import Ready, Server, StartFailed, Stopped

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
        "--head-address", help="With --nodes: this (head) node's address, for the workers' `ray start --address`."
    ),
]
HostOpt = Annotated[str, typer.Option("--host", help="Address vLLM binds (0.0.0.0 for every interface).")]
PortOpt = Annotated[int, typer.Option("--port", min=1, max=65535, help="Port vLLM listens on.")]
ApiKeyFileOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key-file",
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
ReadyTimeoutOpt = Annotated[float, typer.Option("--ready-timeout", min=1, help="Seconds to wait for vLLM to answer.")]
LogFileOpt = Annotated[
    str | None, typer.Option("--log-file", help="vLLM's output (default: <cache>/logs/serve-<model>-<time>.log).")
]
CacheDirOpt = Annotated[
    str | None,
    typer.Option(
        "--cache-dir",
        help="Root of qwdeploy's caches (compile caches, logs, calibration; default $QWDEPLOY_CACHE_DIR, "
        "else ~/.cache/qwdeploy).",
    ),
]
ServeJsonOpt = Annotated[
    bool, typer.Option("--json", help="With --dry-run: the command, environment and plan as JSON.")
]


@app.command(context_settings={"allow_interspersed_args": True})
@plan_options(exclude=("num_gpus", "compile_cache"))
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
    0 --dry-run, 3 the plan does not fit, 30 vLLM is not installed, 31 vLLM failed to start,
    was not ready in time or exited while serving, 1 an error you can fix, 2 usage.
    """
    if cache_dir:  # the same root as `warm --cache-dir`, so serve finds what warm built
        os.environ["QWDEPLOY_CACHE_DIR"] = str(Path(cache_dir).expanduser())
    options = ServerOptions(host=host, port=port, extra=tuple(vllm_args or ()))
    try:
        with reported_errors():
            found = install.detect_vllm()
            plan, device = _plan(request, found, head_address)
            if found is None and not dry_run:
                raise missing_vllm(gpu_found=device == "cuda")
            options = replace(options, api_key=_read_api_key(api_key_file))
            progress = None if dry_run else _progress()
            cfg, kv, state = launch.prepare(
                plan, device, options, fetch=not no_download, dry_run=dry_run, progress=progress
            )
            if dry_run:
                _show_dry_run(cfg, plan, as_json)
                return
            assert found is not None
            view = _ServeView(plan, cfg, kv, state, found, device)
            stopped = _run(cfg, view, log_file, options.api_key, ready_timeout)
    except KeyboardInterrupt:  # before vLLM started (planning, the download)
        render.error(
            "interrupted before vLLM started",
            "run the same command again: downloaded files are kept, partial ones resume",
        )
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    killed = ", killed after the timeout" if stopped.killed else ""
    render.info(f"vLLM stopped (exit code {stopped.vllm_exit_code}{killed}).")
    if stopped.survivors:
        render.warning(f"{stopped.survivors} process(es) of vLLM's group are still alive")
    raise typer.Exit(int(ExitCode.INTERRUPTED))


def _plan(request: PlanRequest, install: VllmInstall | None, head_address: str) -> tuple[Plan, str]:
    """The plan serve runs: multi-node on Ray (this node is the head), else the local GPUs or CPU."""
    if request.nodes and request.nodes > 1:  # vLLM's own multi-node path
        plan, device = api.plan(request), "cuda"
        render.info(ray.ray_instructions(plan, head_address))
    else:
        plan, device = api.plan_for_launch(replace(request, gpu=None, num_gpus=None), install)
    if not plan.fits:
        reason = next((n for n in plan.notes if n.startswith("Does not fit")), "see the plan")
        raise QwdeployError(
            f"{plan.model} does not fit: {reason}",
            hint=f"`qwdeploy plan {request.model} ...` shows why and the alternatives",
            exit_code=ExitCode.DOES_NOT_FIT,
        )
    return plan, device


def _progress() -> Any:
    from qwdeploy.cli.progress import RichProgress  # rich's progress bars: only when downloading

    return RichProgress()


def _show_dry_run(cfg: Launch, plan: Plan, as_json: bool) -> None:
    if as_json:
        render.print_json({**cfg.to_json(), "plan": plan.to_json()})
    else:
        typer.echo(cfg.command_line())


def _run(cfg: Launch, view: _ServeView, log_file: str | None, api_key: str | None, ready_timeout: float) -> Stopped:
    log_path = Path(log_file) if log_file else launch.default_log_path(view.plan, cache_root())
    for note in cfg.notes:
        render.info(note)
    state = view.state
    expected = f", expected start ~{state.expected_start_s:.0f} s" if state.expected_start_s else ""
    render.info(f"compile cache: {'warm' if state.warm else 'cold'}{expected} ({state.directory})")
    render.info("Command: " + cfg.command_line())
    try:
        watch = supervisor.Watch(view.started, view.phase, view.ready, view.stopping, ready_timeout_s=ready_timeout)
        return supervisor.serve(cfg, log_path, api_key, watch)
    except StartFailed as e:
        for line in e.log_tail:
            render.info("  | " + line)
        raise


def _read_api_key(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        key = Path(path).read_text().strip()
    except OSError as e:
        raise QwdeployError(f"cannot read --api-key-file {path}: {e.strerror}") from None
    if not key:
        raise QwdeployError(f"--api-key-file {path} is empty", hint="put the key on its first line")
    return key


class _ServeView:
    """What `serve` shows while vLLM starts and once it answers; records the start."""

    def __init__(self, plan: Plan, cfg: Launch, kv: CpuKv | None, state: CacheState, install: VllmInstall, device: str):
        self.plan, self.cfg, self.kv, self.state = plan, cfg, kv, state
        self.install, self.device = install, device

    def started(self, server: Server) -> None:
        render.info(f"vLLM pid {server.pid} (process group {server.pid}); its log: {server.log_path}")

    def phase(self, name: str, elapsed: float) -> None:
        render.info(f"  {elapsed:6.1f} s  {name}")

    def stopping(self, sig: str) -> None:
        render.info(f"{sig}: stopping vLLM (its whole process group) ...")

    def ready(self, ready: Ready) -> None:
        typer.echo(f"Serving {ready.model} at {ready.endpoint} (ready in {ready.seconds:.1f} s)")
        report, plan = ready.report, self.plan
        predicted = actual.predictions(plan, self.device, self.kv)
        expected = self.state.expected_start_s or (plan.performance or {}).get("predicted_cold_start_s")
        rows = actual.compare(predicted, report, (expected, round(ready.seconds, 1)))
        gpu = "CPU" if self.device == "cpu" else plan.gpu.name
        cpu = {"kv_cache_space_gib": self.cfg.kv_cache_space_gib, "gpu_memory_utilization": None}
        start = records.Start(
            gpu=gpu,
            device=self.device,
            vllm_version=self.install.version,
            predicted={**predicted, "start_s": expected},
            seconds_to_ready=ready.seconds,
            extra=cpu if self.device == "cpu" else {},
            compile_cache_warm=bool(self.state.warm),
        )
        # Recorded before anything is printed: a stop right after the table loses nothing.
        try:  # a read-only cache must not stop a server that works
            where, error = records.append(records.make_record(plan, report, start)), None
            cache.mark_built(self.state, start_phases(report, ready.seconds))
        except OSError as e:
            where, error = None, e
        typer.echo(f"Plan vs actual (vLLM {report.vllm_version or self.install.version}, {gpu}):")
        for r in rows:
            typer.echo(f"  {r.label:<18} {render.shown(r.unit, r.predicted):>14} {render.shown(r.unit, r.actual):>14}")
        if error is not None:
            render.warning(f"start not recorded: {error}")
        else:
            render.info(f"Recorded in {where}.")
        render.info("Ctrl-C stops vLLM.")
