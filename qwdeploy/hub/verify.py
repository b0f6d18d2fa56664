"""A downloaded file against the hub's size and sha256 (or git oid for small files) (I/O)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from qwdeploy.hub.files import (
    Progress,
    RemoteFile,
)


def file_digest(
    path: Path, git: bool = False, on_bytes: Callable[[int], None] = lambda n: None
) -> tuple[int, str, str | None]:
    """(size, sha256, git blob sha1 if `git`) of a file, streamed."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % size) if git else None
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            sha256.update(block)
            if sha1 is not None:
                sha1.update(block)
            on_bytes(len(block))
    return size, sha256.hexdigest(), sha1.hexdigest() if sha1 is not None else None


def verify(
    files: Sequence[RemoteFile], folder: Path, progress: Progress
) -> tuple[list[RemoteFile], list[tuple[str, str]]]:
    """Check every file against the listing: (files with computed sha256, [(path, problem)])."""
    good: list[RemoteFile] = []
    bad: list[tuple[str, str]] = []
    progress.start("verifying", sum(f.size for f in files), len(files))
    try:
        for f in files:
            path = folder / f.path
            try:
                size, sha256, git_oid = file_digest(path, bool(f.git_oid), lambda n: progress.advance(nbytes=n))
            except FileNotFoundError:
                bad.append((f.path, "missing"))
                continue
            if size != f.size:
                bad.append((f.path, f"{size} bytes, the hub lists {f.size}"))
            elif f.sha256 and sha256 != f.sha256:
                bad.append((f.path, f"sha256 {sha256[:12]}…, the hub lists {f.sha256[:12]}…"))
            elif not f.sha256 and f.git_oid and git_oid != f.git_oid:
                bad.append((f.path, f"git oid {(git_oid or '')[:12]}…, the hub lists {f.git_oid[:12]}…"))
            else:
                good.append(replace(f, sha256=sha256))
            progress.advance(files=1)
    finally:
        progress.stop()
    return good, bad


def discard(folder: Path, rel: str, local_dir: Path | None) -> None:
    """Delete one downloaded file (and its HF cache blob or metadata) so it is fetched again."""
    path = folder / rel
    if path.is_symlink():  # HF cache: snapshots/<commit>/<file> -> ../../blobs/<etag>
        # Only the repo's own blobs/<etag> entry goes (a file, or in huggingface_hub 2.x maybe a
        # link into the cache-wide shared store, which other repos may use and is left alone).
        blob = Path(os.path.normpath(path.parent / os.readlink(path)))
        if blob.parent == folder.parent.parent / "blobs":
            blob.unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    if local_dir is not None:  # huggingface_hub's bookkeeping for local_dir downloads
        Path(local_dir, ".cache", "huggingface", "download", rel + ".metadata").unlink(missing_ok=True)
