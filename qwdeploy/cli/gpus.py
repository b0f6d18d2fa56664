"""`qwdeploy gpus`: the local GPUs as CUDA will number them, through NVML."""

from __future__ import annotations

from qwdeploy.cli import render
from qwdeploy.cli.app import app, reported_errors
from qwdeploy.cli.options import JsonOpt
from qwdeploy.gpus import local


@app.command(short_help="List the local GPUs as CUDA numbers them (NVML).")
def gpus(as_json: JsonOpt = False) -> None:
    """List the local GPUs as CUDA will number them: memory, processes, MIG, links (through NVML).

    Exit codes: 0 ok, 10 no NVIDIA driver library, 11 driver library and kernel module differ,
    12 no GPU visible, 13 CUDA_VISIBLE_DEVICES names a GPU that does not exist.
    """
    with reported_errors():
        data = local.local().to_json()
    render.print_json(data) if as_json else render.gpus(data)
