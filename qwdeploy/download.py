"""Weights from Hugging Face, an HF mirror or ModelScope: only what vLLM needs, verified.

The one module that talks to huggingface_hub and modelscope; both are imported inside the functions
that need them, so `qwdeploy plan` never loads them. The flow for one source:

  list the repo (size + sha256/git oid per file) -> select vLLM's files, refuse unsafe names
  -> check free disk (with margin) -> the client's snapshot_download for exactly those files
  (resumes from its own partial files) -> hash every file against the listing; a mismatch is
  deleted and fetched once more, then reported.

``source="auto"`` tries Hugging Face, the hf-mirror.com mirror, then ModelScope (reachable ones
first) and moves to the next when one fails, also mid-download. An explicit setting (--source,
--endpoint, HF_ENDPOINT, MODELSCOPE_ENDPOINT/_DOMAIN, VLLM_USE_MODELSCOPE) pins one source.

Destinations: the hub's own cache (HF: $HF_HUB_CACHE/models--org--name/snapshots/<commit>;
ModelScope: $MODELSCOPE_CACHE/models/org--name/snapshots/<revision>), where `vllm serve ORG/NAME`
(or VLLM_USE_MODELSCOPE=true) finds the weights offline; or a plain --local-dir.

The decisions without I/O (which files, which sources, where, how much disk) are in hub_files.py.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.hub_files import (
    HF_ENDPOINT,
    PROBE_TIMEOUT_S,
    DownloadError,
    Manifest,
    RemoteFile,
    Source,
    _existing_parent,
    build_manifest,
    check_disk,
    choose_sources,
    destination,
    disk_margin_bytes,
    hf_cache_dir,
    modelscope_cache_dir,
    order_by_reachability,
    present,
)

# ---- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What a download would do (``--dry-run``), and what it did."""

    manifest: Manifest
    path: Path
    present: tuple[RemoteFile, ...]  # already at the destination with the right size
    free_bytes: int
    verified: tuple[RemoteFile, ...] = ()  # after a download: every file with its computed sha256

    @property
    def present_bytes(self) -> int:
        return sum(f.size for f in self.present)

    @property
    def needed_bytes(self) -> int:
        return self.manifest.total_bytes - self.present_bytes

    @property
    def fits(self) -> bool:
        return self.free_bytes >= self.needed_bytes + disk_margin_bytes(self.needed_bytes)

    def to_json(self) -> dict:
        m = self.manifest
        return {
            "source": m.source.name,
            "repo_id": m.repo_id,
            "revision": m.commit or m.revision,
            "path": str(self.path),
            "files": [f.to_json() for f in (self.verified or m.files)],
            "total_bytes": m.total_bytes,
        }


class Progress:
    """What a download reports while it runs; the CLI passes a Rich one (progress.py)."""

    def note(self, message: str) -> None:
        pass

    def planned(self, plan: Plan) -> None:
        """The listing is in and the disk has room: what is about to be fetched, and where."""

    def start(
        self,
        phase: str,
        total_bytes: int,
        total_files: int,
        done_bytes: int = 0,
        done_files: int = 0,
    ) -> None:
        pass

    def advance(self, nbytes: int = 0, files: int = 0) -> None:
        pass

    def stop(self) -> None:
        pass


# ---- I/O: free space, probes -------------------------------------------------------------------


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that will hold `path` (its nearest existing parent)."""
    return shutil.disk_usage(_existing_parent(Path(path))).free


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Does anything answer HTTP at `endpoint` within `timeout`? (Any status counts.)"""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def _probe_all(sources: Sequence[Source]) -> dict[str, bool]:
    endpoints = list(dict.fromkeys(s.endpoint for s in sources))
    with ThreadPoolExecutor(max_workers=len(endpoints)) as pool:
        return dict(zip(endpoints, pool.map(probe, endpoints)))


# ---- errors from the clients -------------------------------------------------------------------

_NOT_FOUND = {
    "RepositoryNotFoundError",
    "RevisionNotFoundError",
    "EntryNotFoundError",
    "RemoteEntryNotFoundError",
    "NotExistError",
    "NotFoundError",
}
_UNAUTHORIZED = {
    "GatedRepoError",
    "AuthenticationError",
    "PermissionDeniedError",
    "DisabledRepoError",
}
_VERIFY = {"FileIntegrityError", "FileSizeMismatchError"}
_NETWORK = {
    "LocalEntryNotFoundError",
    "OfflineModeIsEnabled",
    "NetworkError",
    "RequestTimeoutError",
    "ServerError",
    "RateLimitError",
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "TimeoutException",
    "RemoteProtocolError",
    "ProxyError",
    "TransportError",
    "ConnectionError",
    "Timeout",
    "ChunkedEncodingError",
    "ContentDecodingError",
    "FileMetadataError",
    "ProtocolError",
    "MaxRetryError",
    "IncompleteRead",
    "DryRunError",
}


def _status(exc: BaseException) -> int | None:
    for obj in (getattr(exc, "response", None), exc):
        code = getattr(obj, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def classify(exc: BaseException) -> ExitCode | None:
    """Map a hub client's exception (or its cause chain) to an exit code; None: a bug."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    found: list[ExitCode] = []
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        names = {c.__name__ for c in type(e).__mro__}
        failed = getattr(e, "failed_files", None)  # modelscope_hub's FileDownloadError
        if isinstance(failed, dict):
            todo.extend(v for v in failed.values() if isinstance(v, BaseException))
        if names & _UNAUTHORIZED:
            found.append(ExitCode.UNAUTHORIZED)
        elif names & _NOT_FOUND:
            found.append(ExitCode.NOT_FOUND)
        elif names & _VERIFY:
            found.append(ExitCode.VERIFY_FAILED)
        elif isinstance(e, OSError) and e.errno in (28, 122):  # ENOSPC, EDQUOT
            found.append(ExitCode.DISK_FULL)
        elif _status(e) in (401, 403):
            found.append(ExitCode.UNAUTHORIZED)
        elif _status(e) == 404:
            found.append(ExitCode.NOT_FOUND)
        elif names & _NETWORK or "HTTPError" in names or "HfHubHTTPError" in names:
            found.append(ExitCode.NETWORK)
        for nxt in (e.__cause__, e.__context__):
            if nxt is not None:
                todo.append(nxt)
    for code in (
        ExitCode.DISK_FULL,
        ExitCode.UNAUTHORIZED,
        ExitCode.NOT_FOUND,
        ExitCode.VERIFY_FAILED,
        ExitCode.NETWORK,
    ):
        if code in found:
            return code
    return None


_HINTS = {
    ExitCode.NOT_FOUND: "check the repo id and --revision; a private repo also answers 'not found' "
    "without a token (HF_TOKEN / MODELSCOPE_API_TOKEN)",
    ExitCode.UNAUTHORIZED: "accept the model's terms on the hub page, then set HF_TOKEN "
    "(or MODELSCOPE_API_TOKEN for ModelScope)",
    ExitCode.NETWORK: "check the connection or proxy, or pick a source (--source, --endpoint); "
    "run again: complete files are kept",
    ExitCode.DISK_FULL: "free some space, or pick another disk with --local-dir",
    ExitCode.VERIFY_FAILED: "the source served corrupt data; run again, or use another --source",
}
_WHAT = {
    ExitCode.NOT_FOUND: "not found",
    ExitCode.UNAUTHORIZED: "access refused (gated or private repo)",
    ExitCode.NETWORK: "could not be downloaded (network)",
    ExitCode.DISK_FULL: "disk full",
    ExitCode.VERIFY_FAILED: "failed verification",
}


TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN")


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Take tokens out of a message: the token variables' values, and anything shaped hf_..."""
    env = os.environ if env is None else env
    for var in TOKEN_VARS:
        token = env.get(var)
        if token and len(token) >= 4:
            text = text.replace(token, "***")
    return re.sub(r"\bhf_[A-Za-z0-9]{8,}", "hf_***", text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact((text[0] if text else type(exc).__name__)[:300])[:200]


@contextlib.contextmanager
def _client_errors(source: Source, repo_id: str):
    """Client exceptions become one-line DownloadErrors with an exit code; others stay bugs."""
    try:
        yield
    except QwdeployError:
        raise
    except Exception as e:
        code = classify(e)
        if code is None:
            raise
        raise DownloadError(
            f"{repo_id} {_WHAT[code]} on {source.name} ({source.endpoint}): {type(e).__name__}: {_first_line(e)}",
            hint=_HINTS[code],
            exit_code=code,
        ) from None


# ---- I/O: the clients --------------------------------------------------------------------------


def _hf_token(source: Source) -> str | bool | None:
    # The user's HF token goes to huggingface.co and to endpoints the user chose, never to a
    # public mirror that auto mode picked on its own.
    return None if (source.explicit or source.name == "hf") else False


def _ms_token(env: Mapping[str, str]) -> str | None:
    return env.get("MODELSCOPE_API_TOKEN") or None


@contextlib.contextmanager
def _hf_session(source: Source):
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
def _ms_session():
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
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if patched:
            patched[0].tqdm = patched[1]


def list_files(source: Source, repo_id: str, revision: str | None, env: Mapping[str, str]) -> Manifest:
    """The hub's listing (sizes, checksums) for `repo_id`, reduced to vLLM's files."""
    revision = revision or source.default_revision
    with _client_errors(source, repo_id):
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


def _ms_listing(source: Source, repo_id: str, revision: str, env: Mapping[str, str]) -> list[dict]:
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


def _exact(paths: Iterable[str]) -> list[str]:
    """Glob patterns that match exactly these names (the clients take fnmatch patterns)."""
    return [glob.escape(p) for p in paths]


def _fetch(
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
        with _client_errors(source, manifest.repo_id):
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


def _hf_bar_class(progress: Progress) -> type:
    """A tqdm look-alike for huggingface_hub's `tqdm_class`: bytes and files go to `progress`."""

    class Bar:
        _lock = None

        def __init__(self, iterable=None, *args, **kwargs):
            self.iterable = iterable
            self.total = kwargs.get("total")
            self.n = kwargs.get("initial") or 0
            desc = str(kwargs.get("desc") or "")
            bytes_bar = kwargs.get("unit") == "B"
            # huggingface_hub 2.x also feeds a network "transfer" bar with the same bytes: skip it.
            self.kind = (
                ("bytes" if not desc.lower().startswith("downloading bytes") else None) if bytes_bar else "files"
            )
            self.disable = False
            if self.kind == "bytes" and self.n:
                progress.advance(nbytes=int(self.n))

        def update(self, n=1):
            n = n or 0
            self.n += n
            if self.kind == "bytes":
                progress.advance(nbytes=int(n))
            elif self.kind == "files":
                progress.advance(files=int(n))

        def __iter__(self):
            for item in self.iterable or ():
                yield item
                self.update(1)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __getattr__(self, name):  # refresh, close, set_description, set_postfix_str, ...
            return lambda *a, **k: None

        @classmethod
        def get_lock(cls):
            import threading

            if cls._lock is None:
                cls._lock = threading.RLock()
            return cls._lock

        @classmethod
        def set_lock(cls, lock):
            cls._lock = lock

        format_dict: dict = {}

    return Bar


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


# ---- verification ------------------------------------------------------------------------------


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
                bad.append((f.path, f"git oid {git_oid[:12]}…, the hub lists {f.git_oid[:12]}…"))
            else:
                good.append(replace(f, sha256=sha256))
            progress.advance(files=1)
    finally:
        progress.stop()
    return good, bad


def _discard(folder: Path, rel: str, local_dir: Path | None) -> None:
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


# ---- the two entry points ----------------------------------------------------------------------


@dataclass
class _Attempts:
    errors: list[tuple[Source, QwdeployError]] = field(default_factory=list)

    def best(self) -> QwdeployError:
        """The error most worth showing: specific (auth, not found) over 'network'."""
        order = [
            ExitCode.DISK_FULL,
            ExitCode.UNAUTHORIZED,
            ExitCode.VERIFY_FAILED,
            ExitCode.NOT_FOUND,
            ExitCode.ERROR,
            ExitCode.NETWORK,
        ]
        return min(
            (e for _, e in self.errors),
            key=lambda e: order.index(e.exit_code) if e.exit_code in order else len(order),
        )


_FALLBACK = {ExitCode.NETWORK, ExitCode.NOT_FOUND, ExitCode.UNAUTHORIZED, ExitCode.VERIFY_FAILED}


def _repo(model: str, dtype: str | None) -> str:
    from qwdeploy import catalog

    variant = catalog.get(model, dtype)
    if variant.local_path is not None:
        raise DownloadError(
            f"{variant.local_path} is a local directory: nothing to download",
            hint="pass a repo id such as Qwen/Qwen3-8B",
        )
    return variant.hf_repo_id


def _sources(source: str, endpoint: str | None, env: Mapping[str, str], progress: Progress) -> list[Source]:
    sources, probe_first = choose_sources(source, endpoint, env)
    if probe_first:
        reachable = _probe_all(sources)
        for s in sources:
            if not reachable.get(s.endpoint):
                progress.note(f"{s.name} ({s.endpoint}) did not answer within {PROBE_TIMEOUT_S:g} s")
        sources = order_by_reachability(sources, reachable)
    return sources


def _plan_one(
    source: Source,
    repo_id: str,
    revision: str | None,
    local_dir: Path | None,
    env: Mapping[str, str],
) -> Plan:
    manifest = list_files(source, repo_id, revision, env)
    dest = destination(manifest, local_dir, env)
    return Plan(manifest, dest, present(manifest, dest), free_bytes(dest))


def _try_sources(sources: Sequence[Source], attempt: Callable[[Source], Plan], progress: Progress) -> Plan:
    attempts = _Attempts()
    for i, src in enumerate(sources):
        try:
            return attempt(src)
        except QwdeployError as e:
            attempts.errors.append((src, e))
            if e.exit_code not in _FALLBACK or i == len(sources) - 1:
                break
            progress.note(f"{src.name} failed ({e.message}); trying {sources[i + 1].name}")
    raise attempts.best()


def plan_download(
    model: str,
    dtype: str | None = None,
    *,
    source: str = "auto",
    endpoint: str | None = None,
    revision: str | None = None,
    local_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    sources: Sequence[Source] | None = None,
    progress: Progress | None = None,
) -> Plan:
    """What `download` would fetch (first source that answers), where to, whether it fits."""
    env = os.environ if env is None else env
    progress = progress or Progress()
    repo_id = _repo(model, dtype)
    local = Path(local_dir) if local_dir else None
    chosen = list(sources) if sources else _sources(source, endpoint, env, progress)
    return _try_sources(chosen, lambda s: _plan_one(s, repo_id, revision, local, env), progress)


def download(
    model: str,
    dtype: str | None = None,
    *,
    source: str = "auto",
    endpoint: str | None = None,
    revision: str | None = None,
    local_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    sources: Sequence[Source] | None = None,
    progress: Progress | None = None,
) -> Plan:
    """Download MODEL's vLLM files, verified; the plan with `path` and the verified files."""
    env = os.environ if env is None else env
    progress = progress or Progress()
    repo_id = _repo(model, dtype)
    local = Path(local_dir).expanduser().absolute() if local_dir else None
    chosen = list(sources) if sources else _sources(source, endpoint, env, progress)

    def attempt(src: Source) -> Plan:
        plan = _plan_one(src, repo_id, revision, local, env)
        check_disk(plan.needed_bytes, plan.free_bytes, _existing_parent(plan.path))
        progress.planned(plan)
        folder = _fetch(plan.manifest, plan.manifest.files, local, env, progress, plan.present)
        if (
            local is None
            and plan.manifest.commit
            and folder.name != plan.manifest.commit
            and plan.manifest.source.protocol == "hf"
        ):
            raise DownloadError(
                f"{repo_id} changed on {src.name} during the download "
                f"({plan.manifest.commit[:12]} -> {folder.name[:12]})",
                hint="run again",
                exit_code=ExitCode.NETWORK,
            )
        good, bad = verify(plan.manifest.files, folder, progress)
        if bad:
            progress.note(
                f"{len(bad)} file(s) failed verification, fetching them again: "
                + "; ".join(f"{p}: {why}" for p, why in bad)
            )
            redo = [f for f in plan.manifest.files if f.path in {p for p, _ in bad}]
            for f in redo:
                _discard(folder, f.path, local)
            _fetch(plan.manifest, redo, local, env, progress)
            again, bad = verify(redo, folder, progress)
            if bad:
                for p, _ in bad:
                    _discard(folder, p, local)
                raise DownloadError(
                    f"{repo_id} from {src.name}: {len(bad)} file(s) failed verification "
                    "twice and were deleted: " + "; ".join(f"{p}: {why}" for p, why in bad),
                    hint=_HINTS[ExitCode.VERIFY_FAILED],
                    exit_code=ExitCode.VERIFY_FAILED,
                )
            by_path = {f.path: f for f in good + again}
            good = [by_path[f.path] for f in plan.manifest.files]
        return replace(plan, path=folder, verified=tuple(good))

    return _try_sources(chosen, attempt, progress)
