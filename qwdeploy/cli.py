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
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="Weights: bf16, fp16, fp8, int4 or int8 (picks Qwen's official variant).")]
ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="Profile name (chat, long-context, throughput, low-latency, cost, agent) or a YAML path.")]
GpuOpt = Annotated[Optional[str], typer.Option("--gpu", help="Plan for this GPU model instead of the local GPUs (e.g. H100, L40S, A100-40GB).")]
NumGpusOpt = Annotated[Optional[int], typer.Option("--num-gpus", help="How many of --gpu to plan for (default 1).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]
TpOpt = Annotated[Optional[int], typer.Option("--tensor-parallel-size", "-tp", help="Pin tensor_parallel_size.")]
MmlOpt = Annotated[Optional[int], typer.Option("--max-model-len", help="Pin max_model_len (tokens).")]
GmuOpt = Annotated[Optional[float], typer.Option("--gpu-memory-utilization", min=0.01, max=1.0, help="Pin gpu_memory_utilization.")]
KvOpt = Annotated[Optional[str], typer.Option("--kv-cache-dtype", help="Pin kv_cache_dtype: auto or fp8.")]
SeqsOpt = Annotated[Optional[int], typer.Option("--max-num-seqs", min=1, help="Pin max_num_seqs.")]
MnbtOpt = Annotated[Optional[int], typer.Option("--max-num-batched-tokens", min=1, help="Pin max_num_batched_tokens.")]
NodesOpt = Annotated[Optional[int], typer.Option("--nodes", min=1, help="Plan across this many nodes (pipeline parallel across nodes, tensor parallel inside; Ray).")]
GpusPerNodeOpt = Annotated[Optional[int], typer.Option("--num-gpus-per-node", min=1, help="GPUs per node with --nodes (default: --num-gpus, or 8).")]
EagerOpt = Annotated[Optional[bool], typer.Option("--enforce-eager/--cuda-graphs", help="Pin eager mode (no CUDA graphs) or graphs.", show_default=False)]


def make_plan(model, dtype, profile, gpu, num_gpus, tp, mml, gmu, kv, seqs, mnbt, eager,
              nodes=None, gpus_per_node=None):
    """Everything `plan` does before rendering; serve, export and warm reuse it."""
    from qwdeploy import catalog, planner, profiles

    if kv is not None and kv not in ("auto", "fp8", "fp8_e4m3", "fp8_e5m2"):
        raise QwdeployError(f"--kv-cache-dtype {kv!r} is not supported", hint="use auto or fp8")
    prof = profiles.load(profile)
    variant = catalog.get(model, dtype)
    variants = [variant] if (dtype or variant.weights != "bf16" or variant.local_path) \
        else _profile_variants(variant, prof)
    pins = planner.Pins(tensor_parallel_size=tp, max_model_len=mml, gpu_memory_utilization=gmu,
                        kv_cache_dtype=kv, max_num_seqs=seqs, max_num_batched_tokens=mnbt,
                        enforce_eager=eager)
    if nodes and nodes > 1:
        from qwdeploy import multinode

        if not gpu:
            raise QwdeployError("--nodes needs --gpu NAME (the GPU of every node)",
                                hint="e.g. --nodes 2 --gpu H100 --num-gpus-per-node 8")
        result = multinode.plan(variants, prof, gpu, nodes, gpus_per_node or num_gpus or 8, pins)
    else:
        gpus, local = _gpus(gpu, num_gpus)
        result = planner.plan(variants, prof, gpus, pins, local=local)
    from qwdeploy import performance

    return performance.attach(result)


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
    as_json: JsonOpt = False,
) -> None:
    """Work out how MODEL fits on the GPUs under PROFILE, and print the vLLM command.

    Exit codes: 0 fits, 3 does not fit (the plan and alternatives are still printed),
    1 an error you can fix, 2 usage.
    """
    with reported_errors():
        result = make_plan(model, dtype, profile, gpu, num_gpus, tensor_parallel_size,
                           max_model_len, gpu_memory_utilization, kv_cache_dtype, max_num_seqs,
                           max_num_batched_tokens, enforce_eager, nodes, num_gpus_per_node)
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

    rows = [{"repo_id": v.repo_id, "weights": v.weight_dtype, "quantization":
             v.spec.quantization.method if v.spec.quantization else None,
             "layers": v.spec.num_hidden_layers, "kv_heads": v.spec.num_key_value_heads,
             "max_position_embeddings": v.spec.max_position_embeddings,
             "config": v.config_provenance} for v in catalog.variants()]
    render.print_json(rows) if as_json else render.models(rows)


# ---- further commands register below (gpus, download, serve, export, warm) ------------------


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"qwdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                                help="Show the version and exit.")] = False) -> None:
    pass


def main() -> None:
    app()
