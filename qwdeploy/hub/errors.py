"""Hub client errors as one line and an exit code, however the client and the hub word them."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.hub.files import (
    DownloadError,
    Source,
)

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


# The most specific answer wins when a chain of exceptions says several things.
_PRECEDENCE = (ExitCode.DISK_FULL, ExitCode.UNAUTHORIZED, ExitCode.NOT_FOUND, ExitCode.VERIFY_FAILED, ExitCode.NETWORK)


def classify(exc: BaseException) -> ExitCode | None:
    """Map a hub client's exception (or its cause chain) to an exit code; None: a bug.

    What the client's exception class says wins over a bare HTTP status: huggingface.co answers
    401 to an anonymous request for a repo that does not exist, and huggingface_hub tells that
    (X-Error-Code RepoNotFound: RepositoryNotFoundError) from a gated repo (GatedRepo)."""
    chain = _chain(exc)
    found = {_named(e) for e in chain}
    if not found & {ExitCode.UNAUTHORIZED, ExitCode.NOT_FOUND}:
        found |= {_by_status(e) for e in chain}
    return next((code for code in _PRECEDENCE if code in found), None)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes and contexts, and the files modelscope reports as failed."""
    seen: set[int] = set()
    todo, out = [exc], []
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        failed = getattr(e, "failed_files", None)  # modelscope_hub's FileDownloadError
        if isinstance(failed, dict):
            todo.extend(v for v in failed.values() if isinstance(v, BaseException))
        todo.extend(nxt for nxt in (e.__cause__, e.__context__) if nxt is not None)
    return out


def _named(e: BaseException) -> ExitCode | None:
    names = {c.__name__ for c in type(e).__mro__}
    if names & _UNAUTHORIZED:
        return ExitCode.UNAUTHORIZED
    if names & _NOT_FOUND:
        return ExitCode.NOT_FOUND
    if names & _VERIFY:
        return ExitCode.VERIFY_FAILED
    if isinstance(e, OSError) and e.errno in (28, 122):  # ENOSPC, EDQUOT
        return ExitCode.DISK_FULL
    if names & _NETWORK or "HTTPError" in names or "HfHubHTTPError" in names:
        return ExitCode.NETWORK
    return None


_HF_NOT_FOUND_CODES = {"RepoNotFound", "RevisionNotFound", "EntryNotFound"}
_HF_BAD_TOKEN = "Invalid credentials in Authorization header"


def _by_status(e: BaseException) -> ExitCode | None:
    """The HTTP answer, read as the Hugging Face Hub means it. The Hub marks a gated repo
    (X-Error-Code GatedRepo) and a refused token; a 401 it explains otherwise (anonymous: "Invalid
    username or password.") is its answer for a repo that does not exist or is private."""
    status = _status(e)
    headers = getattr(getattr(e, "response", None), "headers", None) or {}
    code, message = headers.get("X-Error-Code"), headers.get("X-Error-Message")
    if code == "GatedRepo" or message == _HF_BAD_TOKEN:
        return ExitCode.UNAUTHORIZED
    if code in _HF_NOT_FOUND_CODES or (status == 401 and message):
        return ExitCode.NOT_FOUND
    if status in (401, 403):
        return ExitCode.UNAUTHORIZED
    return ExitCode.NOT_FOUND if status == 404 else None


HINTS = {
    ExitCode.NOT_FOUND: "check the repo id and --revision; a private repo also answers 'not found' "
    "without a token (HF_TOKEN / MODELSCOPE_API_TOKEN)",
    ExitCode.UNAUTHORIZED: "accept the model's terms on the hub page, then set HF_TOKEN "
    "(or MODELSCOPE_API_TOKEN for ModelScope)",
    ExitCode.NETWORK: "check the connection, DNS or proxy, or pick a source (--source, --endpoint)",
    ExitCode.DISK_FULL: "free some space, or pick another disk with --local-dir",
    ExitCode.VERIFY_FAILED: "the source served corrupt data; run again, or use another --source",
}
RESUME = "; run again: complete files are kept"  # after a transfer started, not on a dry run


WHAT = {
    ExitCode.NOT_FOUND: "not found",
    ExitCode.UNAUTHORIZED: "access refused (gated or private repo)",
    ExitCode.NETWORK: "could not be downloaded (network)",
    ExitCode.DISK_FULL: "disk full",
    ExitCode.VERIFY_FAILED: "failed verification",
}


TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN")
MAX_REASON = 200


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Take tokens out of a message: the token variables' values, and anything shaped hf_..."""
    env = os.environ if env is None else env
    for var in TOKEN_VARS:
        token = env.get(var)
        if token and len(token) >= 4:
            text = text.replace(token, "***")
    return re.sub(r"\bhf_[A-Za-z0-9]{8,}", "hf_***", text)


def shorten(text: str, limit: int = MAX_REASON) -> str:
    """At most `limit` characters, cut between words (an ellipsis says so), never inside one."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(" ,;:") + "…"


def unreachable(exc: BaseException, endpoint: str) -> str | None:
    """Why nothing answered at `endpoint`, in words (DNS, refused, timed out), when the exception's
    chain says so; None for any other failure."""
    for e in _chain(exc):
        reason = getattr(e, "reason", None)  # urllib's URLError wraps the socket error
        for err in (e, reason):
            if isinstance(err, socket.gaierror):
                return f"could not resolve host {urlsplit(endpoint).hostname}"
            if isinstance(err, ConnectionRefusedError):
                return "connection refused"
            if isinstance(err, (TimeoutError, socket.timeout)) or type(err).__name__ in _TIMEOUTS:
                return "no answer (timed out)"
        if "Name or service not known" in str(e) or "nodename nor servname" in str(e):
            return f"could not resolve host {urlsplit(endpoint).hostname}"
    return None


_TIMEOUTS = {"ConnectTimeout", "ReadTimeout", "TimeoutException", "Timeout", "RequestTimeoutError"}


def _reason(e: BaseException, endpoint: str) -> str:
    said = unreachable(e, endpoint)
    if said:
        return said
    text = str(e).strip().splitlines()
    return shorten(redact(f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")))


@contextlib.contextmanager
def client_errors(source: Source, repo_id: str, resumable: bool = False) -> Iterator[None]:
    """Client exceptions become one-line DownloadErrors with an exit code; others stay bugs.
    `resumable`: files may be on disk already, and the network hint says a rerun keeps them."""
    try:
        yield
    except QwdeployError:
        raise
    except Exception as e:
        code = classify(e)
        if code is None:
            raise
        hint = HINTS[code] + (RESUME if resumable and code == ExitCode.NETWORK else "")
        raise DownloadError(
            f"{repo_id} {WHAT[code]} on {source.name} ({source.endpoint}): {_reason(e, source.endpoint)}",
            hint=hint,
            exit_code=code,
        ) from None


# The error most worth showing first: specific (auth, not found) over 'network'.
_ORDER = (
    ExitCode.DISK_FULL,
    ExitCode.UNAUTHORIZED,
    ExitCode.VERIFY_FAILED,
    ExitCode.NOT_FOUND,
    ExitCode.ERROR,
    ExitCode.NETWORK,
)


@dataclass
class Attempts:
    repo_id: str = ""
    errors: list[tuple[Source, QwdeployError]] = field(default_factory=list)

    def best(self) -> QwdeployError:
        """The most telling error; when several sources failed, one line that names each one's."""
        ranked = sorted(self.errors, key=lambda se: _ORDER.index(se[1].exit_code) if se[1].exit_code in _ORDER else 9)
        first = ranked[0][1]
        if len(self.errors) == 1:
            return first
        each = "; ".join(f"{s.name} ({s.endpoint}): {self.said(s, e)}" for s, e in self.errors)
        what = f"{self.repo_id}: every source failed" if self.repo_id else "every source failed"
        return DownloadError(f"{what}: {each}", hint=first.hint, exit_code=first.exit_code)

    def said(self, source: Source, e: QwdeployError) -> str:
        """One source's error without the repo and source a list already names."""
        head, sep, reason = e.message.partition(f" on {source.name} ({source.endpoint}): ")
        if not sep:
            return e.message.removeprefix(f"{self.repo_id} ")
        what = head.removeprefix(f"{self.repo_id} ")
        return reason if e.exit_code == ExitCode.NETWORK else f"{what}: {reason}"


FALLBACK = {ExitCode.NETWORK, ExitCode.NOT_FOUND, ExitCode.UNAUTHORIZED, ExitCode.VERIFY_FAILED}
