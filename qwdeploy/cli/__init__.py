"""The `qwdeploy` command line: one module per command, each thin (parse, call the library, render, exit)."""

from __future__ import annotations

from qwdeploy.cli import download, export, gpus, plan, serve, warm  # noqa: F401 - each registers its command
from qwdeploy.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
