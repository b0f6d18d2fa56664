"""Rich progress for `qwdeploy download`: bytes and files while the client works, then verifying.

Besides render.py the only module that imports rich. The download reports through the small
`hub.files.Progress` interface; this draws it on stderr (bars on a terminal only, notes always)
and prints the file list of `--dry-run` on stdout.
"""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from qwdeploy.hub import files
from qwdeploy.units import GiB


class RichProgress(files.Progress):
    """One bar per phase (download, verify): bytes, speed, time left, files done."""

    def __init__(self, console: Console | None = None, bars: bool | None = None):
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.bars = self.console.is_terminal if bars is None else bars
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._files = [0, 0]
        self._lock = threading.Lock()

    def note(self, message: str) -> None:
        self.console.print(Text("• ") + Text(message))

    def planned(self, plan: files.Plan) -> None:
        m = plan.manifest
        have = f", {len(plan.present)} already here" if plan.present else ""
        self.note(
            f"{m.repo_id} @ {(m.commit or m.revision)[:12]} from {m.source.name} "
            f"({m.source.endpoint}): {len(m.files)} files, {m.total_bytes / GiB:.2f} GiB{have}; "
            f"{plan.free_bytes / GiB:.1f} GiB free at {plan.path}"
        )
        if m.skipped:
            shown = ", ".join(m.skipped[:4]) + (", ..." if len(m.skipped) > 4 else "")
            self.note(f"not needed by vLLM, left on the hub: {shown}")

    def start(
        self,
        phase: str,
        total_bytes: int,
        total_files: int,
        done_bytes: int = 0,
        done_files: int = 0,
    ) -> None:
        self.stop()
        if not self.bars:
            return
        self._files = [done_files, total_files]
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[files]}"),
            console=self.console,
            transient=True,
        )
        self._task = self._progress.add_task(
            phase, total=max(total_bytes, 1), completed=done_bytes, files=self._files_text()
        )
        self._progress.start()

    def _files_text(self) -> str:
        done, total = self._files
        return f"{min(done, total)}/{total} files"

    def advance(self, nbytes: int = 0, files: int = 0) -> None:
        progress, task = self._progress, self._task
        if progress is None or task is None:
            return
        with self._lock:
            self._files[0] += files
            text = self._files_text()
        progress.update(task, advance=nbytes, files=text)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def show_plan(data: dict[str, Any], console: Console | None = None) -> None:
    """The `--dry-run` listing: every file with its size and checksum, then the total."""
    console = console or Console(highlight=False, soft_wrap=False)
    table = Table(title=f"{data['repo_id']} @ {data['revision']} from {data['source']}", title_justify="left")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    table.add_column("sha256")
    for f in data["files"]:
        table.add_row(f["path"], f"{f['size']:,}", (f["sha256"] or "(git oid only)")[:16])
    table.add_row(
        Text("total", style="bold"),
        Text(f"{data['total_bytes']:,}", style="bold"),
        f"{data['total_bytes'] / GiB:.2f} GiB",
    )
    console.print(table)
    console.print(Text("destination: ") + Text(data["path"]), soft_wrap=True)
