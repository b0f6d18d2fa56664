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
from dataclasses import replace
from pathlib import Path

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.hub.clients import fetch, list_files
from qwdeploy.hub.errors import FALLBACK, HINTS, Attempts
from qwdeploy.hub.files import (
    PROBE_TIMEOUT_S,
    DownloadError,
    Plan,
    Progress,
    Source,
    check_disk,
    choose_sources,
    destination,
    existing_parent,
    order_by_reachability,
    present,
)
from qwdeploy.hub.verify import discard, verify


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that will hold `path` (its nearest existing parent)."""
    return shutil.disk_usage(existing_parent(Path(path))).free


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


def _repo(model: str, dtype: str | None) -> str:
    from qwdeploy.planning import catalog

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
    attempts = Attempts()
    for i, src in enumerate(sources):
        try:
            return attempt(src)
        except QwdeployError as e:
            attempts.errors.append((src, e))
            if e.exit_code not in FALLBACK or i == len(sources) - 1:
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
        check_disk(plan.needed_bytes, plan.free_bytes, existing_parent(plan.path))
        progress.planned(plan)
        folder = fetch(plan.manifest, plan.manifest.files, local, env, progress, plan.present)
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
                discard(folder, f.path, local)
            fetch(plan.manifest, redo, local, env, progress)
            again, bad = verify(redo, folder, progress)
            if bad:
                for p, _ in bad:
                    discard(folder, p, local)
                raise DownloadError(
                    f"{repo_id} from {src.name}: {len(bad)} file(s) failed verification "
                    "twice and were deleted: " + "; ".join(f"{p}: {why}" for p, why in bad),
                    hint=HINTS[ExitCode.VERIFY_FAILED],
                    exit_code=ExitCode.VERIFY_FAILED,
                )
            by_path = {f.path: f for f in good + again}
            good = [by_path[f.path] for f in plan.manifest.files]
        return replace(plan, path=folder, verified=tuple(good))

    return _try_sources(chosen, attempt, progress)
