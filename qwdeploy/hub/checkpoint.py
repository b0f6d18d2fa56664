"""A hub checkpoint's facts for `plan` (I/O): its config files and its safetensors headers.

Through the same sources, endpoints, tokens and caches as `download`: the listing names the
files; config.json, generation_config.json, a separate quant config and the safetensors index
come through the hub client into its cache; each shard's header comes with two HTTP range
requests (its first 8 bytes give the header length, then the JSON header: a few KB, never the
weights). The facts are kept under qwdeploy's cache, so a later plan works offline
(HF_HUB_OFFLINE=1, or when no source answers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.hub.checkpoint_files import (
    CONFIG,
    GENERATION_CONFIG,
    HEADER_LENGTH_BYTES,
    Facts,
    facts_from_json,
    header_length,
    index_file,
    quant_config_file,
    shards_of,
    tensors_of,
)
from qwdeploy.hub.clients import list_files, read_file, read_range
from qwdeploy.hub.download import Where, try_sources
from qwdeploy.hub.files import DownloadError, Progress, Source
from qwdeploy.paths import cache_root
from qwdeploy.planning.catalog import spec_from_config
from qwdeploy.planning.layout import Tensor


def read(repo_id: str, where: Where | None = None, progress: Progress | None = None) -> Facts:
    """The facts of `repo_id`: from the first source that answers, else from the cache."""
    where = where or Where()
    env = where.environ()
    if _offline(env):
        return _cached(repo_id, where.revision, env) or _not_cached(repo_id)
    progress = progress or Progress()
    try:
        return try_sources(
            where.chosen(progress), lambda s: _read_one(s, repo_id, where.revision, env), progress, repo_id
        )
    except QwdeployError as e:
        found = _cached(repo_id, where.revision, env) if e.exit_code == ExitCode.NETWORK else None
        if found is None:
            raise
        return found


def _read_one(source: Source, repo_id: str, revision: str | None, env: Mapping[str, str]) -> Facts:
    manifest = list_files(source, repo_id, revision, env)
    rev = manifest.commit or manifest.revision
    names = [f.path for f in manifest.files]

    def json_file(path: str) -> dict[str, Any]:
        try:
            data = json.loads(read_file(source, repo_id, rev, path, env, offline=False))
        except ValueError:
            raise DownloadError(f"{repo_id}: {path} is not valid JSON", hint="check the repo") from None
        return data if isinstance(data, dict) else {}

    config = json_file(CONFIG)
    spec_from_config(config, repo_id)  # a Qwen3 architecture, before any header is read
    generation = json_file(GENERATION_CONFIG) if GENERATION_CONFIG in names else None
    qfile = quant_config_file(names)
    quant = (json_file(qfile), qfile) if qfile and not config.get("quantization_config") else None
    index = index_file(names)
    shards = shards_of(json_file(index) if index else None, names)
    prior = _cached(repo_id, revision, env)
    if prior is not None and manifest.commit and (prior.revision, prior.shards) == (rev, shards):
        tensors = prior.tensors  # the same commit: its headers are known
    else:
        tensors = tuple(t for shard in shards for t in _header(source, repo_id, rev, shard, env))
    facts = Facts(repo_id, source.name, source.endpoint, rev, config, generation, quant, shards, tensors)
    _save(facts, revision, env)
    return facts


def _header(source: Source, repo_id: str, rev: str, shard: str, env: Mapping[str, str]) -> tuple[Tensor, ...]:
    """One shard's tensors: 8 bytes, then the JSON header they announce."""
    n = header_length(read_range(source, repo_id, rev, shard, (0, HEADER_LENGTH_BYTES), env), shard)
    span = (HEADER_LENGTH_BYTES, HEADER_LENGTH_BYTES + n)
    return tensors_of(read_range(source, repo_id, rev, shard, span, env), shard)


def _offline(env: Mapping[str, str]) -> bool:
    return (env.get("HF_HUB_OFFLINE") or "").strip().lower() in ("1", "true", "yes", "on")


def _cache_file(repo_id: str, revision: str | None, env: Mapping[str, str]) -> Path:
    name = (revision or "default").replace("/", "--")
    return cache_root(env) / "checkpoints" / repo_id.replace("/", "--") / f"{name}.json"


def _cached(repo_id: str, revision: str | None, env: Mapping[str, str]) -> Facts | None:
    try:
        return facts_from_json(json.loads(_cache_file(repo_id, revision, env).read_text()))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _save(facts: Facts, revision: str | None, env: Mapping[str, str]) -> None:
    path = _cache_file(facts.repo_id, revision, env)
    try:  # a read-only cache costs the next plan a few requests, nothing more
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(facts.to_json()))
        tmp.replace(path)
    except OSError:
        pass


def _not_cached(repo_id: str) -> Facts:
    raise DownloadError(
        f"{repo_id}: HF_HUB_OFFLINE is set and its facts are not in qwdeploy's cache",
        hint="plan it once online (its config and safetensors headers are then kept), or unset HF_HUB_OFFLINE",
        exit_code=ExitCode.NETWORK,
    )
