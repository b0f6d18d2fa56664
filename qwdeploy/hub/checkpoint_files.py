"""A hub checkpoint's facts, as read from its small files and its safetensors headers: no I/O.

The pure half of qwdeploy.hub.checkpoint: which files to read, the safetensors header format
(8 bytes little-endian header length, then that many bytes of JSON: dtype, shape and data
offsets per tensor), the shards an index names, and the cached form of it all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qwdeploy.hub.files import DownloadError
from qwdeploy.planning.layout import Tensor
from qwdeploy.planning.quant import CONFIG_FILES

HEADER_LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
CACHE_VERSION = 1


@dataclass(frozen=True)
class Facts:
    """What planning needs from a hub checkpoint, and where it came from."""

    repo_id: str
    source: str  # hf | hf-mirror | modelscope
    endpoint: str
    revision: str  # the commit when the hub names one, else the branch or tag asked for
    config: dict[str, Any]
    generation_config: dict[str, Any] | None
    quant_config: tuple[dict[str, Any], str] | None  # (its content, its file) when apart from config.json
    shards: tuple[str, ...]
    tensors: tuple[Tensor, ...]
    cached: bool = False  # read from the local caches, not the network

    @property
    def files(self) -> tuple[str, ...]:
        small = [CONFIG] + ([GENERATION_CONFIG] if self.generation_config is not None else [])
        small += [self.quant_config[1]] if self.quant_config else []
        return (*small, *(f"{s} (header)" for s in self.shards))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": CACHE_VERSION,
            "repo_id": self.repo_id,
            "source": self.source,
            "endpoint": self.endpoint,
            "revision": self.revision,
            "config": self.config,
            "generation_config": self.generation_config,
            "quant_config": list(self.quant_config) if self.quant_config else None,
            "shards": list(self.shards),
            "tensors": [[t.name, t.dtype, list(t.shape)] for t in self.tensors],
        }


def facts_from_json(data: Mapping[str, Any]) -> Facts | None:
    """Facts cached by an earlier read (None for another cache version)."""
    if data.get("version") != CACHE_VERSION:
        return None
    qc = data.get("quant_config")
    return Facts(
        repo_id=str(data["repo_id"]),
        source=str(data["source"]),
        endpoint=str(data["endpoint"]),
        revision=str(data["revision"]),
        config=dict(data["config"]),
        generation_config=data.get("generation_config"),
        quant_config=(dict(qc[0]), str(qc[1])) if qc else None,
        shards=tuple(data["shards"]),
        tensors=tuple(Tensor(str(n), str(d), tuple(int(x) for x in s)) for n, d, s in data["tensors"]),
        cached=True,
    )


def header_length(first: bytes, shard: str) -> int:
    """The JSON header's length from a shard's first 8 bytes."""
    if len(first) < HEADER_LENGTH_BYTES:
        raise _not_safetensors(shard, f"{len(first)} bytes where 8 were asked")
    n = int.from_bytes(first[:HEADER_LENGTH_BYTES], "little")
    if not 2 <= n <= MAX_HEADER_BYTES:
        raise _not_safetensors(shard, f"a header length of {n} bytes")
    return n


def tensors_of(header: bytes, shard: str) -> tuple[Tensor, ...]:
    """Every tensor a header lists (name, dtype, shape), in the header's order."""
    try:
        entries = json.loads(header.rstrip(b" "))
        return tuple(
            Tensor(name, str(e["dtype"]), tuple(int(x) for x in e["shape"]))
            for name, e in entries.items()
            if name != "__metadata__"
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _not_safetensors(shard, f"an unreadable header ({type(e).__name__})") from None


def shards_of(index: Mapping[str, Any] | None, names: Iterable[str]) -> tuple[str, ...]:
    """The shards vLLM loads: those the index maps tensors to, else every root *.safetensors."""
    if index is not None:
        return tuple(sorted(set((index.get("weight_map") or {}).values())))
    return tuple(sorted(n for n in names if n.endswith(".safetensors") and "/" not in n))


def index_file(names: Iterable[str]) -> str | None:
    found = sorted(n for n in names if n.endswith(".safetensors.index.json") and "/" not in n)
    return found[0] if found else None


def quant_config_file(names: Iterable[str]) -> str | None:
    present = set(names)
    return next((f for f in CONFIG_FILES if f in present), None)


def _not_safetensors(shard: str, what: str) -> DownloadError:
    return DownloadError(
        f"{shard} is not a safetensors file: {what}", hint="check the repo; qwdeploy reads safetensors"
    )
