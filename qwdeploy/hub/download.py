"""Weights from Hugging Face, an HF mirror or ModelScope: only what vLLM needs, verified (I/O).

The flow for one source:

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

The decisions without I/O (which files, which sources, where, how much disk) are in hub/files.py,
the clients in hub/clients.py, their errors in hub/errors.py.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.hub.clients import fetch, list_files
from qwdeploy.hub.errors import FALLBACK, HINTS, Attempts, shorten, unreachable
from qwdeploy.hub.files import (
    PROBE_TIMEOUT_S,
    DownloadError,
    Plan,
    Progress,
    RemoteFile,
    Source,
    check_disk,
    choose_sources,
    destination,
    existing_parent,
    order_by_reachability,
    present,
)
from qwdeploy.hub.verify import discard, verify
from qwdeploy.paths import unwritable

T = TypeVar("T")


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that will hold `path` (its nearest existing parent)."""
    return shutil.disk_usage(existing_parent(Path(path))).free


def no_answer(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why nothing answered HTTP at `endpoint` within `timeout` (DNS, refused, timed out, ...),
    or None when something did (any status counts)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as e:
        return unreachable(e, endpoint) or shorten(str(getattr(e, "reason", None) or e) or type(e).__name__)


def _probe_all(sources: Sequence[Source]) -> dict[str, str | None]:
    endpoints = list(dict.fromkeys(s.endpoint for s in sources))
    with ThreadPoolExecutor(max_workers=len(endpoints)) as pool:
        return dict(zip(endpoints, pool.map(no_answer, endpoints), strict=True))


def _repo(model: str, dtype: str | None) -> str:
    """The repo to fetch: a catalog variant's, or MODEL itself when it names another hub repo."""
    from qwdeploy.errors import UnknownModelError
    from qwdeploy.planning import catalog

    try:
        variant = catalog.get(model, dtype)
    except UnknownModelError:
        if dtype is None and catalog.is_repo_id(model):
            return catalog.normalise(model)
        raise
    if variant.local_path is not None:
        raise DownloadError(
            f"{variant.local_path} is a local directory: nothing to download",
            hint="pass a repo id such as Qwen/Qwen3-8B",
        )
    return variant.hf_repo_id


def _sources(source: str, endpoint: str | None, env: Mapping[str, str], progress: Progress) -> list[Source]:
    sources, probe_first = choose_sources(source, endpoint, env)
    if probe_first:
        silent = _probe_all(sources)
        for s in sources:
            if silent[s.endpoint]:
                progress.note(f"{s.name} ({s.endpoint}) did not answer: {silent[s.endpoint]}")
        sources = order_by_reachability(sources, {ep: why is None for ep, why in silent.items()})
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
    problem = unwritable(dest)
    if problem is not None:  # before the free-disk check, which would read a file's or /proc's
        where = "--local-dir" if local_dir else "--local-dir (or HF_HOME / MODELSCOPE_CACHE)"
        raise DownloadError(
            f"cannot download into {dest}: {problem}", hint=f"point {where} at a directory you can write"
        )
    return Plan(manifest, dest, present(manifest, dest), free_bytes(dest))


def try_sources(sources: Sequence[Source], attempt: Callable[[Source], T], progress: Progress, repo_id: str = "") -> T:
    """The first source's result; on a failure worth it (network, not found ...), the next's.
    When every source fails, one error names each source's reason."""
    attempts = Attempts(repo_id)
    for i, src in enumerate(sources):
        try:
            return attempt(src)
        except QwdeployError as e:
            if e.exit_code not in FALLBACK:  # the same on every source (a usage error, the disk)
                raise
            attempts.errors.append((src, e))
            if i < len(sources) - 1:
                progress.note(f"{src.name} failed: {attempts.said(src, e)}; trying {sources[i + 1].name}")
    raise attempts.best()


@dataclass(frozen=True)
class Where:
    """Which hub, which revision, which directory. An explicit source or endpoint pins the source."""

    source: str = "auto"  # auto, hf, hf-mirror, modelscope
    endpoint: str | None = None
    revision: str | None = None
    local_dir: str | Path | None = None  # a plain directory instead of the hub's cache
    env: Mapping[str, str] | None = None  # default: os.environ
    sources: Sequence[Source] | None = None  # the sources to try, in order (default: from the above)

    def environ(self) -> Mapping[str, str]:
        return os.environ if self.env is None else self.env

    def chosen(self, progress: Progress) -> list[Source]:
        return list(self.sources) if self.sources else _sources(self.source, self.endpoint, self.environ(), progress)


def plan_download(
    model: str, dtype: str | None = None, where: Where = Where(), progress: Progress | None = None
) -> Plan:
    """What `download` would fetch (first source that answers), where to, whether it fits."""
    progress = progress or Progress()
    repo_id = _repo(model, dtype)
    local = Path(where.local_dir) if where.local_dir else None
    env = where.environ()
    return try_sources(
        where.chosen(progress), lambda s: _plan_one(s, repo_id, where.revision, local, env), progress, repo_id
    )


def download(model: str, dtype: str | None = None, where: Where = Where(), progress: Progress | None = None) -> Plan:
    """Download MODEL's vLLM files, verified; the plan with `path` and the verified files."""
    progress = progress or Progress()
    repo_id = _repo(model, dtype)
    local = Path(os.path.expanduser(where.local_dir)).absolute() if where.local_dir else None
    env = where.environ()

    def attempt(src: Source) -> Plan:
        plan = _plan_one(src, repo_id, where.revision, local, env)
        check_disk(plan.needed_bytes, plan.free_bytes, existing_parent(plan.path))
        progress.planned(plan)
        folder = fetch(plan.manifest, plan.manifest.files, local, env, progress, plan.present)
        _check_commit(plan, folder, local is None)
        good = _verified(plan, folder, local, env, progress)
        return replace(plan, path=folder, verified=tuple(good))

    return try_sources(where.chosen(progress), attempt, progress, repo_id)


def _check_commit(plan: Plan, folder: Path, in_cache: bool) -> None:
    """The hub's cache names the snapshot by commit: another name means the repo moved meanwhile."""
    m = plan.manifest
    if in_cache and m.commit and folder.name != m.commit and m.source.protocol == "hf":
        raise DownloadError(
            f"{m.repo_id} changed on {m.source.name} during the download ({m.commit[:12]} -> {folder.name[:12]})",
            hint="run again",
            exit_code=ExitCode.NETWORK,
        )


def _verified(
    plan: Plan, folder: Path, local: Path | None, env: Mapping[str, str], progress: Progress
) -> list[RemoteFile]:
    """Every file checked against the hub; a mismatch is fetched once more, then reported."""
    m = plan.manifest
    good, bad = verify(m.files, folder, progress)
    if not bad:
        return good
    progress.note(
        f"{len(bad)} file(s) failed verification, fetching them again: " + "; ".join(f"{p}: {why}" for p, why in bad)
    )
    redo = [f for f in m.files if f.path in {p for p, _ in bad}]
    for f in redo:
        discard(folder, f.path, local)
    fetch(m, redo, local, env, progress)
    again, bad = verify(redo, folder, progress)
    if bad:
        for p, _ in bad:
            discard(folder, p, local)
        raise DownloadError(
            f"{m.repo_id} from {m.source.name}: {len(bad)} file(s) failed verification twice and were deleted: "
            + "; ".join(f"{p}: {why}" for p, why in bad),
            hint=HINTS[ExitCode.VERIFY_FAILED],
            exit_code=ExitCode.VERIFY_FAILED,
        )
    by_path = {f.path: f for f in good + again}
    return [by_path[f.path] for f in m.files]
