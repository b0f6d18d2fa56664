"""Hub client errors as one line and an exit code, however the client and the hub word them."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

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
    """Map a hub client's exception (or its cause chain) to an exit code; None: a bug."""
    found = {_code_of(e) for e in _chain(exc)}
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


def _code_of(e: BaseException) -> ExitCode | None:
    names = {c.__name__ for c in type(e).__mro__}
    status = _status(e)
    if names & _UNAUTHORIZED:
        return ExitCode.UNAUTHORIZED
    if names & _NOT_FOUND:
        return ExitCode.NOT_FOUND
    if names & _VERIFY:
        return ExitCode.VERIFY_FAILED
    if isinstance(e, OSError) and e.errno in (28, 122):  # ENOSPC, EDQUOT
        return ExitCode.DISK_FULL
    if status in (401, 403):
        return ExitCode.UNAUTHORIZED
    if status == 404:
        return ExitCode.NOT_FOUND
    if names & _NETWORK or "HTTPError" in names or "HfHubHTTPError" in names:
        return ExitCode.NETWORK
    return None


HINTS = {
    ExitCode.NOT_FOUND: "check the repo id and --revision; a private repo also answers 'not found' "
    "without a token (HF_TOKEN / MODELSCOPE_API_TOKEN)",
    ExitCode.UNAUTHORIZED: "accept the model's terms on the hub page, then set HF_TOKEN "
    "(or MODELSCOPE_API_TOKEN for ModelScope)",
    ExitCode.NETWORK: "check the connection or proxy, or pick a source (--source, --endpoint); "
    "run again: complete files are kept",
    ExitCode.DISK_FULL: "free some space, or pick another disk with --local-dir",
    ExitCode.VERIFY_FAILED: "the source served corrupt data; run again, or use another --source",
}


WHAT = {
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
def client_errors(source: Source, repo_id: str) -> Iterator[None]:
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
            f"{repo_id} {WHAT[code]} on {source.name} ({source.endpoint}): {type(e).__name__}: {_first_line(e)}",
            hint=HINTS[code],
            exit_code=code,
        ) from None


@dataclass
class Attempts:
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


FALLBACK = {ExitCode.NETWORK, ExitCode.NOT_FOUND, ExitCode.UNAUTHORIZED, ExitCode.VERIFY_FAILED}
