"""The huggingface_hub and modelscope clients: list a repo, download exactly these files (I/O).

The only module that imports the hub clients; both are imported inside the functions that need
them, so `qwdeploy plan` never loads them.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from qwdeploy.hub.errors import client_errors
from qwdeploy.hub.files import (
    HF_ENDPOINT,
    DownloadError,
    Manifest,
    Progress,
    RemoteFile,
    Source,
    build_manifest,
    hf_cache_dir,
    modelscope_cache_dir,
)


def _hf_token(source: Source) -> str | bool | None:
    # The user's HF token goes to huggingface.co and to endpoints the user chose, never to a
    # public mirror that auto mode picked on its own.
    return None if (source.explicit or source.name == "hf") else False


def _ms_token(env: Mapping[str, str]) -> str | None:
    return env.get("MODELSCOPE_API_TOKEN") or None


@contextlib.contextmanager
def _hf_session(source: Source) -> Iterator[None]:
    """Xet off for non-default endpoints (hf-xet ignores HF_ENDPOINT), quiet logs and bars."""
    import huggingface_hub.constants as hf_constants
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    no_xet = source.endpoint.rstrip("/") != HF_ENDPOINT
    saved_env = os.environ.get("HF_HUB_DISABLE_XET")
    saved_const = getattr(hf_constants, "HF_HUB_DISABLE_XET", False)
    bars_were_off = are_progress_bars_disabled()
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    if no_xet:
        os.environ["HF_HUB_DISABLE_XET"] = "1"
        hf_constants.HF_HUB_DISABLE_XET = True
    disable_progress_bars()
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
        if not bars_were_off:
            enable_progress_bars()
        if no_xet:
            hf_constants.HF_HUB_DISABLE_XET = saved_const
            if saved_env is None:
                os.environ.pop("HF_HUB_DISABLE_XET", None)
            else:
                os.environ["HF_HUB_DISABLE_XET"] = saved_env


@contextlib.contextmanager
def _ms_session() -> Iterator[None]:
    """modelscope_hub draws tqdm bars and logs per file unconditionally; keep stderr for our own."""
    loggers = [logging.getLogger(n) for n in ("modelscope_hub", "modelscope")]
    levels = [lg.level for lg in loggers]
    patched = None
    try:
        import functools

        import modelscope_hub._download as msd

        if hasattr(msd, "tqdm"):
            patched = (msd, msd.tqdm)
            msd.tqdm = functools.partial(msd.tqdm, disable=True)
    except ImportError:
        pass
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if patched:
            patched[0].tqdm = patched[1]  # type: ignore[attr-defined]


def list_files(source: Source, repo_id: str, revision: str | None, env: Mapping[str, str]) -> Manifest:
    """The hub's listing (sizes, checksums) for `repo_id`, reduced to vLLM's files."""
    revision = revision or source.default_revision
    with client_errors(source, repo_id):
        if source.protocol == "hf":
            from huggingface_hub import HfApi
            from huggingface_hub.hf_api import RepoFile as HfRepoFile

            with _hf_session(source):
                api = HfApi(endpoint=source.endpoint, token=_hf_token(source))
                commit = api.model_info(repo_id, revision=revision).sha
                listing = [
                    RemoteFile(
                        f.path,
                        int(f.size),
                        f.lfs.sha256 if f.lfs else None,
                        None if f.lfs else f.blob_id,
                    )
                    for f in api.list_repo_tree(repo_id, recursive=True, revision=commit or revision)
                    if isinstance(f, HfRepoFile)
                ]
            return build_manifest(source, repo_id, revision, commit, listing)
        with _ms_session():
            raw = _ms_listing(source, repo_id, revision, env)
        listing = [
            RemoteFile(
                str(r.get("Path") or r.get("path") or ""),
                int(r.get("Size") or r.get("size") or 0),
                (r.get("Sha256") or r.get("sha256") or None),
            )
            for r in raw
            if (r.get("Type") or r.get("type") or "blob") != "tree"
        ]
        return build_manifest(source, repo_id, revision, None, listing)


def _ms_listing(source: Source, repo_id: str, revision: str, env: Mapping[str, str]) -> list[dict[str, Any]]:
    try:  # modelscope >= 1.38 delegates to modelscope_hub (whose compat layer drops Sha256)
        from modelscope_hub import HubApi
    except ImportError:
        raise DownloadError(
            "ModelScope downloads need modelscope >= 1.38 (the modelscope-hub client)",
            hint="pip install -U 'modelscope>=1.38', or use --source hf / hf-mirror",
        ) from None
    api = HubApi(endpoint=source.endpoint, token=_ms_token(env))
    return [
        {"Path": f.path, "Size": f.size, "Sha256": f.sha256, "Type": getattr(f, "type", "blob")}
        for f in api.list_repo_files(repo_id, "model", revision=revision, recursive=True)
    ]


def read_file(source: Source, repo_id: str, revision: str, path: str, env: Mapping[str, str], offline: bool) -> bytes:
    """A small file (config.json ...) through the client, into its cache (where `download` puts
    it); `offline`: from that cache only."""
    local: str | Path
    with client_errors(source, repo_id):
        if source.protocol == "hf":
            from huggingface_hub import hf_hub_download

            with _hf_session(source):
                local = hf_hub_download(
                    repo_id,
                    path,
                    revision=revision,
                    endpoint=source.endpoint,
                    token=_hf_token(source),
                    cache_dir=str(hf_cache_dir(env)),
                    local_files_only=offline,
                )
        else:
            from modelscope_hub import HubApi

            with _ms_session():
                api = HubApi(endpoint=source.endpoint, token=_ms_token(env))
                local = api.download_file(
                    repo_id,
                    "model",
                    path,
                    revision=revision,
                    cache_dir=modelscope_cache_dir(env),
                    local_files_only=offline,
                )
        return Path(str(local)).read_bytes()


def read_range(
    source: Source, repo_id: str, revision: str, path: str, span: tuple[int, int], env: Mapping[str, str]
) -> bytes:
    """Bytes [start, stop) of a hub file: one HTTP range request (safetensors headers). The body
    is read no further than asked, also from a server that ignores Range."""
    start, stop = span
    ranged = {"Range": f"bytes={start}-{stop - 1}"}
    with client_errors(source, repo_id):
        if source.protocol == "hf":
            from huggingface_hub import hf_hub_url
            from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

            url = hf_hub_url(repo_id, path, revision=revision, endpoint=source.endpoint)
            headers = {**build_hf_headers(token=_hf_token(source)), **ranged}
            with get_session().stream("GET", url, headers=headers, follow_redirects=True) as response:
                if response.status_code >= 400:
                    response.read()
                hf_raise_for_status(response)
                return _first(response.iter_bytes(), stop - start)
        import requests
        from modelscope_hub import HubApi

        api = HubApi(endpoint=source.endpoint, token=_ms_token(env))
        url = api.legacy.get_download_url(repo_id, "model", path, revision)
        with requests.get(url, headers=ranged, cookies=api.get_cookies(), timeout=30, stream=True) as reply:
            reply.raise_for_status()
            return _first(reply.iter_content(chunk_size=65536), stop - start)


def _first(chunks: Iterable[bytes], n: int) -> bytes:
    out = bytearray()
    for chunk in chunks:
        out += chunk
        if len(out) >= n:
            break
    return bytes(out[:n])


def _exact(paths: Iterable[str]) -> list[str]:
    """Glob patterns that match exactly these names (the clients take fnmatch patterns)."""
    return [glob.escape(p) for p in paths]


def fetch(
    manifest: Manifest,
    files: Sequence[RemoteFile],
    local_dir: Path | None,
    env: Mapping[str, str],
    progress: Progress,
    done: Sequence[RemoteFile] = (),
) -> Path:
    """Let the source's client download `files`; return the folder it put them in.

    `done`: files already complete; the clients skip them without a progress report.
    """
    source = manifest.source
    # huggingface_hub's file counter counts skipped files too, modelscope's only fetched ones.
    done_files = len(done) if source.protocol == "modelscope" else 0
    progress.start(
        f"downloading from {source.name}",
        sum(f.size for f in files),
        len(files),
        done_bytes=sum(f.size for f in done),
        done_files=done_files,
    )
    try:
        with client_errors(source, manifest.repo_id, resumable=True):
            if source.protocol == "hf":
                from huggingface_hub import snapshot_download

                with _hf_session(source):
                    # cache_dir also with local_dir: the library read HF_HOME when it was imported.
                    path = snapshot_download(
                        manifest.repo_id,
                        revision=manifest.revision,
                        endpoint=source.endpoint,
                        allow_patterns=_exact(f.path for f in files),
                        token=_hf_token(source),
                        tqdm_class=_hf_bar_class(progress),
                        max_workers=8,
                        cache_dir=str(hf_cache_dir(env)),
                        local_dir=str(local_dir) if local_dir else None,
                    )
            else:
                from modelscope.hub.snapshot_download import (
                    snapshot_download as ms_snapshot_download,
                )

                with _ms_session():
                    path = ms_snapshot_download(
                        model_id=manifest.repo_id,
                        revision=manifest.revision,
                        endpoint=source.endpoint,
                        allow_patterns=_exact(f.path for f in files),
                        token=_ms_token(env),
                        progress_callbacks=[_ms_callback_class(progress)],
                        cache_dir=str(modelscope_cache_dir(env)),
                        local_dir=str(local_dir) if local_dir else None,
                    )
    finally:
        progress.stop()
    return Path(path).absolute()


class _HfBar:
    """A tqdm look-alike for huggingface_hub's `tqdm_class`: bytes and files go to `progress`."""

    progress: Progress = Progress()
    _lock: Any = None
    format_dict: dict[str, Any] = {}

    def __init__(self, iterable: Any = None, *args: Any, **kwargs: Any) -> None:
        self.iterable = iterable
        self.total = kwargs.get("total")
        self.n = kwargs.get("initial") or 0
        self.kind = self._kind(kwargs)
        self.disable = False
        if self.kind == "bytes" and self.n:
            self.progress.advance(nbytes=int(self.n))

    @staticmethod
    def _kind(kwargs: dict[str, Any]) -> str | None:
        if kwargs.get("unit") != "B":
            return "files"
        # huggingface_hub 2.x also feeds a network "transfer" bar with the same bytes: skip it.
        return None if str(kwargs.get("desc") or "").lower().startswith("downloading bytes") else "bytes"

    def update(self, n: int | None = 1) -> None:
        n = n or 0
        self.n += n
        if self.kind == "bytes":
            self.progress.advance(nbytes=int(n))
        elif self.kind == "files":
            self.progress.advance(files=int(n))

    def __iter__(self) -> Any:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def __enter__(self) -> _HfBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __getattr__(self, name: str) -> Any:  # refresh, close, set_description, set_postfix_str, ...
        return lambda *a, **k: None

    @classmethod
    def get_lock(cls) -> Any:
        if cls._lock is None:
            cls._lock = threading.RLock()
        return cls._lock

    @classmethod
    def set_lock(cls, lock: Any) -> None:
        cls._lock = lock


def _hf_bar_class(progress: Progress) -> type:
    """huggingface_hub builds its bars from a class: one bound to this download's `progress`."""
    return type("Bar", (_HfBar,), {"progress": progress, "_lock": None})


def _ms_callback_class(progress: Progress) -> type:
    """A modelscope ProgressCallback: instantiated per file with (filename, file_size)."""

    class Callback:
        def __init__(self, filename: str, file_size: int):
            self.size, self.got, self.ended = file_size, 0, False

        def update(self, size: int) -> None:
            self.got += size
            progress.advance(nbytes=size)

        def end(self) -> None:
            if not self.ended and self.got >= self.size:
                progress.advance(files=1)
            self.ended = True

    return Callback
