"""The Typer application, its one error handler, and `main`. Only `main()` leaves the process.

Exit codes are `errors.ExitCode` (documented in README.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated

import typer

from qwdeploy import __version__
from qwdeploy.errors import QwdeployError

app = typer.Typer(
    name="qwdeploy",
    help="Plan, download and serve Qwen3 models with vLLM: the configuration that fits your GPUs, and why.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    rich_markup_mode=None,  # Click's help: wraps to the terminal, never cuts an option name
    pretty_exceptions_show_locals=False,
)


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Turn errors a user can fix into one line on stderr and their exit code."""
    try:
        yield
    except QwdeployError as e:
        from qwdeploy.cli import render

        render.error(e.message, e.hint)
        raise typer.Exit(int(e.exit_code)) from None


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
