"""`qwdeploy download`: weights from Hugging Face, an HF mirror or ModelScope, resumable and verified."""

from __future__ import annotations

from typing import Annotated

import typer

from qwdeploy import api
from qwdeploy.cli import render
from qwdeploy.cli.app import app, reported_errors
from qwdeploy.cli.options import DtypeOpt, EndpointOpt, JsonOpt, ModelArg, RevisionOpt, SourceOpt
from qwdeploy.errors import ExitCode
from qwdeploy.hub.files import Plan as DownloadPlan
from qwdeploy.hub.files import check_disk

LocalDirOpt = Annotated[
    str | None,
    typer.Option("--local-dir", metavar="DIR", help="Plain directory for the files instead of the hub's cache."),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="List the files, sizes and checksums and the total; download nothing.")
]


@app.command(short_help="Download the weights vLLM needs, resumable and verified.")
def download(  # noqa: PLR0913 - Typer declares each option as a parameter
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
    from qwdeploy.cli import progress  # rich's progress bars and the hub clients: only here
    from qwdeploy.hub import download as hub

    bar = progress.RichProgress(bars=False if as_json else None)
    where = hub.Where(source=source, endpoint=endpoint, revision=revision, local_dir=local_dir)
    try:
        with reported_errors():
            repo_id = api.resolve(model, dtype, source, endpoint, revision).repo_id  # a Qwen3 checkpoint?
            result = (hub.plan_download if dry_run else hub.download)(repo_id, None, where, progress=bar)
            if dry_run:
                render.print_json(result.to_json()) if as_json else progress.show_plan(result.to_json())
                check_disk(result.needed_bytes, result.free_bytes, result.path)
                return
    except KeyboardInterrupt:
        bar.stop()
        resume = "run the same command again: complete files are kept, partial ones resume"
        render.error("interrupted", None if dry_run else resume)
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    _done(result, as_json, local_dir)


def _done(result: DownloadPlan, as_json: bool, local_dir: str | None) -> None:
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
