"""What `qwdeploy serve` does once its options are parsed: plan, prepare, start, watch, report."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import typer

from qwdeploy import api
from qwdeploy.api import PlanRequest
from qwdeploy.cli import render
from qwdeploy.cli.app import reported_errors
from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.gpus import specs
from qwdeploy.paths import cache_root
from qwdeploy.planning.plan import Plan
from qwdeploy.vllm import actual, cache, install, launch, ray, records, supervisor
from qwdeploy.vllm.cache import CacheState
from qwdeploy.vllm.command import Launch, ServerOptions
from qwdeploy.vllm.cpu import CpuKv
from qwdeploy.vllm.install import VllmInstall, missing_vllm
from qwdeploy.vllm.log import start_phases
from qwdeploy.vllm.supervisor import Ready, Server, StartFailed, Stopped


@dataclass(frozen=True)
class ServeArgs:
    """serve's own options (the plan options are the request)."""

    vllm_args: tuple[str, ...] = ()
    head_address: str = "HEAD_IP"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_file: str | None = None
    no_download: bool = False
    dry_run: bool = False
    ready_timeout: float = 1800.0
    log_file: str | None = None
    cache_dir: str | None = None
    as_json: bool = False


def run(request: PlanRequest, args: ServeArgs) -> None:
    """The whole `serve`: returns after a dry run; else exits 130 once vLLM stopped on a signal."""
    if args.cache_dir:  # the same root as `warm --cache-dir`, so serve finds what warm built
        os.environ["QWDEPLOY_CACHE_DIR"] = str(Path(os.path.expanduser(args.cache_dir)))
    options = ServerOptions(host=args.host, port=args.port, extra=args.vllm_args)
    try:
        with reported_errors():
            found = install.detect_vllm()
            plan, device = _plan(request, found, args)
            if found is None and not args.dry_run:
                raise missing_vllm(gpu_found=device == "cuda")
            options = replace(options, api_key=_read_api_key(args.api_key_file))
            log_path = None if args.dry_run else launch.log_path(plan, args.log_file, cache_root())
            progress = None if args.dry_run else _progress()
            cfg, kv, state = launch.prepare(
                plan, device, options, fetch=not args.no_download, dry_run=args.dry_run, progress=progress
            )
            if args.dry_run:
                _show_dry_run(cfg, plan, args.as_json)
                return
            assert found is not None and log_path is not None
            view = _ServeView(plan, cfg, kv, state, found, device)
            stopped = _run(cfg, view, log_path, options.api_key, args.ready_timeout)
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


def _plan(request: PlanRequest, install: VllmInstall | None, args: ServeArgs) -> tuple[Plan, str]:
    """The plan serve runs: multi-node on Ray (this node is the head); a dry run with --gpu: the
    GPUs named; else this machine's GPUs (or its CPU), which --gpu must then name."""
    if request.nodes and request.nodes > 1:  # vLLM's own multi-node path
        plan, device = api.plan(request), "cuda"
        render.info(ray.ray_instructions(plan, args.head_address))
    elif request.gpu and args.dry_run:  # the command for GPUs you name, whatever this machine has
        plan, device = api.plan(request), "cuda"
    else:
        plan, device = api.plan_for_launch(replace(request, gpu=None, num_gpus=None), install)
        _check_named_gpus(request, plan, device)
    if not plan.fits:
        reason = next((n for n in plan.notes if n.startswith("Does not fit")), "see the plan")
        raise QwdeployError(
            f"{plan.model} does not fit: {reason}",
            hint=f"`qwdeploy plan {request.model} ...` shows why and the alternatives",
            exit_code=ExitCode.DOES_NOT_FIT,
        )
    render.profile_misses(plan)
    return plan, device


def _check_named_gpus(request: PlanRequest, plan: Plan, device: str) -> None:
    """A real serve runs on the GPUs here: --gpu may only name their kind; --num-gpus is refused."""
    here = "no GPU (vLLM runs on the CPU)" if device == "cpu" else f"{plan.gpu.name} GPUs"
    if request.num_gpus is not None:
        raise QwdeployError(
            "--num-gpus plans for GPUs you name; serve runs on this machine's GPUs",
            hint="add --dry-run to print the command for them, or pick this machine's GPUs with "
            "CUDA_VISIBLE_DEVICES (or pin --tensor-parallel-size)",
            exit_code=ExitCode.USAGE,
        )
    if request.gpu and (device == "cpu" or specs.spec(request.gpu).name != plan.gpu.name):
        raise QwdeployError(
            f"--gpu {request.gpu}: this machine has {here}",
            hint="drop --gpu to serve on this machine, or add --dry-run to print the command for the GPUs named",
            exit_code=ExitCode.USAGE,
        )


def _progress() -> Any:
    from qwdeploy.cli.progress import RichProgress  # rich's progress bars: only when downloading

    return RichProgress()


def _show_dry_run(cfg: Launch, plan: Plan, as_json: bool) -> None:
    if as_json:
        render.print_json({**cfg.to_json(), "plan": plan.to_json()})
    else:
        render.info(f"Planned for {plan.vllm.summary}.")
        typer.echo(cfg.command_line())


def _run(cfg: Launch, view: _ServeView, log_path: Path, api_key: str | None, ready_timeout: float) -> Stopped:
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
