"""The plan options, declared once: plan, serve, warm and export take them and get a `PlanRequest`.

`@plan_options()` adds the options to a Typer command's signature and calls the command with
`request=PlanRequest(...)` built from them, so every command plans from the same flags with the
same defaults and checks.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

from qwdeploy.api import PlanRequest
from qwdeploy.cli.app import reported_errors
from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.planning.plan import Pins
from qwdeploy.units import parse_size

F = TypeVar("F", bound=Callable[..., Any])

ModelArg = Annotated[
    str, typer.Argument(metavar="MODEL", help="Repo id (Qwen/Qwen3-14B-AWQ), base id, or a local model directory.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype", metavar="DTYPE", help="Weights: bf16, fp16, fp8, int4 or int8 (picks Qwen's official variant)."
    ),
]
ProfileOpt = Annotated[
    str,
    typer.Option(
        "--profile",
        "-p",
        metavar="NAME|FILE",
        help="Profile name (chat, long-context, throughput, low-latency, cost, agent) or a YAML path.",
    ),
]
GpuOpt = Annotated[
    str | None,
    typer.Option(
        "--gpu", metavar="NAME", help="Plan for this GPU model instead of the local GPUs (e.g. H100, L40S, A100-40GB)."
    ),
]
NumGpusOpt = Annotated[
    int | None, typer.Option("--num-gpus", metavar="N", min=1, help="How many of --gpu to plan for (default 1).")
]
TpOpt = Annotated[
    int | None, typer.Option("--tensor-parallel-size", "-tp", metavar="N", min=1, help="Pin tensor_parallel_size.")
]
MmlOpt = Annotated[
    int | None, typer.Option("--max-model-len", metavar="TOKENS", min=1, help="Pin max_model_len (tokens).")
]


def _fraction(value: float | None) -> float | None:
    """gpu_memory_utilization is a share of the GPU: 0 < x <= 1 (Typer's min/max are closed)."""
    if value is not None and not 0 < value <= 1:
        raise typer.BadParameter(f"Input should be greater than 0 and at most 1, not {value:g}")
    return value


GmuOpt = Annotated[
    float | None,
    typer.Option(
        "--gpu-memory-utilization",
        metavar="FRACTION",
        callback=_fraction,
        help="Pin gpu_memory_utilization (0 < x <= 1).",
    ),
]
KvOpt = Annotated[
    str | None, typer.Option("--kv-cache-dtype", metavar="DTYPE", help="Pin kv_cache_dtype: auto or fp8.")
]
SeqsOpt = Annotated[int | None, typer.Option("--max-num-seqs", metavar="N", min=1, help="Pin max_num_seqs.")]
MnbtOpt = Annotated[
    int | None, typer.Option("--max-num-batched-tokens", metavar="TOKENS", min=1, help="Pin max_num_batched_tokens.")
]
EagerOpt = Annotated[
    bool | None,
    typer.Option(
        "--enforce-eager/--cuda-graphs", help="Pin eager mode (no CUDA graphs) or graphs.", show_default=False
    ),
]
NodesOpt = Annotated[
    int | None,
    typer.Option(
        "--nodes",
        metavar="N",
        min=1,
        help="Plan across this many nodes (pipeline parallel across nodes, tensor parallel inside; Ray).",
    ),
]
GpusPerNodeOpt = Annotated[
    int | None,
    typer.Option(
        "--num-gpus-per-node", metavar="N", min=1, help="GPUs per node with --nodes (default: --num-gpus, or 8)."
    ),
]


def _text_opt(flag: str, help_text: str) -> Any:
    """An optional text option (the plan options read it at run time, through PLAN_OPTIONS)."""
    return Annotated[str | None, typer.Option(flag, help=help_text)]


GpuMemoryOpt = _text_opt(
    "--gpu-memory", "Plan for a GPU that is not listed: its CUDA total (24GiB, 80GB, bytes); with --compute-capability."
)
ComputeCapabilityOpt = _text_opt("--compute-capability", "With --gpu-memory: its compute capability (7.5, 8.6, 9.0).")
ThinkingOpt = _text_opt("--thinking", "on or off: hybrid Qwen3 models think by default or not (default: profile's).")
SourceOpt = Annotated[
    str,
    typer.Option(
        "--source",
        metavar="SOURCE",
        help="Hub for downloads and for repos qwdeploy does not ship: auto (try hf, hf-mirror, modelscope), hf, "
        "hf-mirror or modelscope.",
    ),
]
EndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoint", metavar="URL", help="Hub URL for the source (an HF mirror, or a ModelScope site); pins it."
    ),
]
RevisionOpt = Annotated[
    str | None,
    typer.Option(
        "--revision", metavar="REV", help="Branch, tag or commit (default: main on HF, master on ModelScope)."
    ),
]
CompileCacheOpt = Annotated[
    str,
    typer.Option(
        "--compile-cache",
        metavar="cold|warm",
        help="cold (a first start: torch.compile's peak counts) or warm (a restart reusing the compile cache).",
    ),
]
VllmVersionOpt = Annotated[
    str | None,
    typer.Option(
        "--vllm-version",
        help="Plan for this vLLM release (e.g. 0.30.0; default: $QWDEPLOY_VLLM_VERSION, else the installed vLLM, "
        "else 0.26.0).",
    ),
]

# (parameter name, annotation, default), in the order --help lists them.
PLAN_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("dtype", DtypeOpt, None),
    ("profile", ProfileOpt, "chat"),
    ("gpu", GpuOpt, None),
    ("num_gpus", NumGpusOpt, None),
    ("gpu_memory", GpuMemoryOpt, None),
    ("compute_capability", ComputeCapabilityOpt, None),
    ("thinking", ThinkingOpt, None),
    ("tensor_parallel_size", TpOpt, None),
    ("max_model_len", MmlOpt, None),
    ("gpu_memory_utilization", GmuOpt, None),
    ("kv_cache_dtype", KvOpt, None),
    ("max_num_seqs", SeqsOpt, None),
    ("max_num_batched_tokens", MnbtOpt, None),
    ("enforce_eager", EagerOpt, None),
    ("nodes", NodesOpt, None),
    ("num_gpus_per_node", GpusPerNodeOpt, None),
    ("compile_cache", CompileCacheOpt, "cold"),
    ("source", SourceOpt, "auto"),
    ("endpoint", EndpointOpt, None),
    ("revision", RevisionOpt, None),
    ("vllm_version", VllmVersionOpt, None),
)


def request_from(model: str, values: dict[str, Any]) -> PlanRequest:
    """The plan options' values as a `PlanRequest` (a missing option takes its default)."""
    v = {name: default for name, _, default in PLAN_OPTIONS} | values
    compile_cache = v["compile_cache"]
    if compile_cache not in ("cold", "warm"):
        raise _usage(f"--compile-cache {compile_cache!r} is not allowed", "cold or warm")
    pins = Pins(
        tensor_parallel_size=v["tensor_parallel_size"],
        max_model_len=v["max_model_len"],
        gpu_memory_utilization=v["gpu_memory_utilization"],
        kv_cache_dtype=v["kv_cache_dtype"],
        max_num_seqs=v["max_num_seqs"],
        max_num_batched_tokens=v["max_num_batched_tokens"],
        enforce_eager=v["enforce_eager"],
        thinking=_on_off("--thinking", v["thinking"]),
        compile_cache_warm=compile_cache == "warm",
    )
    return PlanRequest(
        model=model,
        dtype=v["dtype"],
        profile=v["profile"],
        gpu=v["gpu"],
        num_gpus=v["num_gpus"],
        gpu_memory_bytes=_size("--gpu-memory", v["gpu_memory"]),
        compute_capability=_capability(v["compute_capability"]),
        nodes=v["nodes"],
        gpus_per_node=v["num_gpus_per_node"],
        pins=pins,
        source=v["source"],
        endpoint=v["endpoint"],
        revision=v["revision"],
        vllm_version=v["vllm_version"],
    )


def _usage(message: str, hint: str) -> QwdeployError:
    return QwdeployError(message, hint=hint, exit_code=ExitCode.USAGE)


def _on_off(flag: str, value: str | None) -> bool | None:
    if value is None:
        return None
    if value.lower() not in ("on", "off"):
        raise _usage(f"{flag} {value!r} is not allowed", "on or off")
    return value.lower() == "on"


def _size(flag: str, value: str | None) -> int | None:
    try:
        return None if value is None else parse_size(value)
    except ValueError as e:
        raise _usage(f"{flag} {e}", "e.g. 24GiB, 80GB or a number of bytes") from None


def _capability(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\.(\d)\s*", value)
    if m is None:
        raise _usage(f"--compute-capability {value!r} is not allowed", "major.minor, e.g. 7.5, 8.6, 9.0")
    return int(m.group(1)), int(m.group(2))


def plan_options(exclude: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Give a command the plan options; it is called with `request` (PlanRequest) and its own
    parameters. The options go after the command's arguments and before its own options."""

    def decorate(func: F) -> F:
        hints = get_type_hints(func, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(func).parameters.values()
            if p.name != "request"
        ]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
            for name, annotation, default in PLAN_OPTIONS
            if name not in exclude
        ]
        arguments = [p for p in own if p.default is inspect.Parameter.empty or _is_argument(p)]
        rest = [p for p in own if p not in arguments]
        names = {p.name for p in added}

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            plan_values = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            with reported_errors():
                request = request_from(kwargs["model"], plan_values)
            return func(request=request, **kwargs)

        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in (*arguments, *added, *rest)]
        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        return command  # type: ignore[return-value]

    return decorate


def _is_argument(p: inspect.Parameter) -> bool:
    extras = getattr(p.annotation, "__metadata__", ())
    return any(isinstance(e, typer.models.ArgumentInfo) for e in extras)
