"""`qwdeploy plan` and `qwdeploy models`: the configuration that fits, and the models qwdeploy knows."""

from __future__ import annotations

import typer

from qwdeploy import api
from qwdeploy.api import PlanRequest
from qwdeploy.cli import render
from qwdeploy.cli.app import app, reported_errors
from qwdeploy.cli.options import JsonOpt, ModelArg, plan_options
from qwdeploy.errors import ExitCode
from qwdeploy.planning import catalog


@app.command(short_help="Work out the vLLM configuration that fits, and why.")
@plan_options()
def plan(model: ModelArg, request: PlanRequest, as_json: JsonOpt = False) -> None:
    """Work out how MODEL fits on the GPUs under PROFILE, and print the vLLM command.

    Exit codes: 0 fits and meets the profile; 4 fits (the command starts and serves one
    sequence of its max_model_len) but misses a profile target (context or concurrency: see
    profile_misses); 3 does not fit, nothing starts (the plan and alternatives are still
    printed); 1 an error you can fix; 2 usage.
    """
    with reported_errors():
        result = api.plan(request)
    if as_json:
        render.print_json(result.to_json())
    else:
        render.plan(result)
    if not result.fits:
        raise typer.Exit(int(ExitCode.DOES_NOT_FIT))
    if not result.meets_profile:
        raise typer.Exit(int(ExitCode.MISSES_PROFILE))


@app.command(short_help="List the Qwen3 models and variants qwdeploy knows.")
def models(as_json: JsonOpt = False) -> None:
    """List the Qwen3 models and official quantized variants qwdeploy knows."""
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
