"""Which files of a Qwen3 repo vLLM needs, where they go, and which hub to ask: no I/O.

The pure half of `qwdeploy download` (download.py does the network and the disk): file selection
and name safety, the manifest of one listing, the disk margin, the order of the sources, and
the destination in each hub's own cache layout.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.units import GiB

SOURCES = ("auto", "hf", "hf-mirror", "modelscope")
HF_ENDPOINT = "https://huggingface.co"
HF_MIRROR_ENDPOINT = "https://hf-mirror.com"
MODELSCOPE_ENDPOINT = "https://modelscope.cn"
AUTO_ORDER = (
    ("hf", HF_ENDPOINT),
    ("hf-mirror", HF_MIRROR_ENDPOINT),
    ("modelscope", MODELSCOPE_ENDPOINT),
)
PROBE_TIMEOUT_S = 3.0

# vLLM reads config.json, generation_config.json, the tokenizer files and safetensors shards plus
# their index; quantized repos may keep the quant config in a file of its own. Everything else
# (.bin/.pt/.pth duplicates, original/, gguf/, README, LICENSE) stays on the hub. Root level only.
WANTED_NAMES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "tokenizer.model",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.json",
        "chat_template.jinja",
        "quantize_config.json",
        "quant_config.json",
        "hf_quant_config.json",
    }
)
WANTED_GLOBS = ("*.safetensors", "*.safetensors.index.json")


class DownloadError(QwdeployError):
    pass


# ---- pure: selection, safety, manifest, disk arithmetic, source order -------------------------


def is_wanted(path: str) -> bool:
    """True for the files vLLM needs from a Qwen3 repo (root level only)."""
    if "/" in path:
        return False
    return path in WANTED_NAMES or any(fnmatch.fnmatchcase(path, g) for g in WANTED_GLOBS)


def unsafe_reason(path: str) -> str | None:
    """Why a file name from a server could write outside the destination, or None if it cannot."""
    if not path or "\0" in path:
        return "empty or NUL in name"
    if "\\" in path:
        return "backslash in name"
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return "absolute path"
    parts = path.split("/")
    if any(p in ("..", ".") for p in parts):
        return "'..' or '.' component"
    if "" in parts:
        return "empty path component"
    return None


@dataclass(frozen=True)
class RemoteFile:
    """One file as the hub lists it."""

    path: str
    size: int
    sha256: str | None = None  # LFS files on HF, every file on ModelScope
    git_oid: str | None = None  # HF's git blob sha1 (the only checksum HF gives for small files)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Source:
    name: str  # hf | hf-mirror | modelscope
    endpoint: str
    explicit: bool = False  # chosen by the user (flag or env): may receive the user's token

    @property
    def protocol(self) -> str:
        return "modelscope" if self.name == "modelscope" else "hf"

    @property
    def default_revision(self) -> str:
        return "master" if self.protocol == "modelscope" else "main"


@dataclass(frozen=True)
class Manifest:
    """The files to download from one source, with what the hub says about them."""

    source: Source
    repo_id: str
    revision: str  # branch/tag asked for
    commit: str | None  # resolved commit (HF), None where the hub gives none
    files: tuple[RemoteFile, ...]
    skipped: tuple[str, ...] = ()  # listed but not needed by vLLM

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def build_manifest(
    source: Source, repo_id: str, revision: str, commit: str | None, listing: Iterable[RemoteFile]
) -> Manifest:
    """Refuse a listing with a name that escapes the destination; keep the files vLLM needs."""
    listing = list(listing)
    for f in listing:
        reason = unsafe_reason(f.path)
        if reason:
            raise DownloadError(
                f"{source.name} ({source.endpoint}) lists a file name that would escape the "
                f"destination: {f.path!r} ({reason}); nothing was downloaded",
                hint="the server is broken or hostile; use another --source or --endpoint",
            )
    files = tuple(sorted((f for f in listing if is_wanted(f.path)), key=lambda f: f.path))
    skipped = tuple(sorted(f.path for f in listing if not is_wanted(f.path)))
    names = {f.path for f in files}
    if any(f.path.endswith(".gguf") for f in listing) and not any(n.endswith(".safetensors") for n in names):
        raise DownloadError(
            f"{repo_id} on {source.name} holds GGUF files: vLLM 0.26 runs no GGUF (it moved to the "
            f"vllm-gguf-plugin package)",
            hint="use a safetensors repo: the bf16 model, or its AWQ, GPTQ or FP8 build",
        )
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise DownloadError(
            f"{repo_id} on {source.name} has no config.json + safetensors weights",
            hint="qwdeploy downloads safetensors checkpoints; check the repo id and --revision",
            exit_code=ExitCode.NOT_FOUND,
        )
    return Manifest(source, repo_id, revision, commit, files, skipped)


def disk_margin_bytes(needed_bytes: int) -> int:
    """Head room kept free on top of a download: 5 % of it plus 1 GiB (0 for nothing)."""
    return needed_bytes // 20 + GiB if needed_bytes > 0 else 0


def check_disk(needed_bytes: int, free_bytes: int, where: Path) -> None:
    required = needed_bytes + disk_margin_bytes(needed_bytes)
    if free_bytes < required:
        raise DownloadError(
            f"not enough free disk at {where}: the download needs {needed_bytes / GiB:.2f} GiB "
            f"(+{disk_margin_bytes(needed_bytes) / GiB:.2f} GiB margin), "
            f"{free_bytes / GiB:.2f} GiB free",
            hint="free some space, or use another disk: --local-dir, HF_HOME or MODELSCOPE_CACHE",
            exit_code=ExitCode.DISK_FULL,
        )


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _ms_env_endpoint(env: Mapping[str, str]) -> str | None:
    if env.get("MODELSCOPE_ENDPOINT"):
        return env["MODELSCOPE_ENDPOINT"]
    domain = (env.get("MODELSCOPE_DOMAIN") or "").strip()
    if domain:
        return domain if domain.startswith(("http://", "https://")) else "https://" + domain
    return None


def _hf_name(endpoint: str) -> str:
    return "hf" if endpoint.rstrip("/") == HF_ENDPOINT else "hf-mirror"


def choose_sources(source: str, endpoint: str | None, env: Mapping[str, str]) -> tuple[list[Source], bool]:
    """The sources to try in order, and whether to probe them first (auto, nothing explicit).

    An explicit setting wins and pins one source: --source, then --endpoint, HF_ENDPOINT,
    MODELSCOPE_ENDPOINT / MODELSCOPE_DOMAIN / VLLM_USE_MODELSCOPE.
    """
    if source not in SOURCES:
        raise DownloadError(
            f"unknown --source {source!r}",
            hint=f"one of {', '.join(SOURCES)}",
            exit_code=ExitCode.USAGE,
        )
    hf_env = (env.get("HF_ENDPOINT") or "").strip() or None
    if source == "modelscope":
        return [Source("modelscope", (endpoint or _ms_env_endpoint(env) or MODELSCOPE_ENDPOINT), True)], False
    if source in ("hf", "hf-mirror"):
        default = HF_ENDPOINT if source == "hf" else HF_MIRROR_ENDPOINT
        return [Source(source, (endpoint or hf_env or default).rstrip("/"), True)], False
    pinned = endpoint or hf_env
    if pinned:
        ep = pinned.rstrip("/")
        return [Source(_hf_name(ep), ep, True)], False
    ms = _ms_env_endpoint(env)
    if ms or _truthy(env.get("VLLM_USE_MODELSCOPE")):
        return [Source("modelscope", ms or MODELSCOPE_ENDPOINT, True)], False
    return [Source(name, ep) for name, ep in AUTO_ORDER], True


def order_by_reachability(sources: Sequence[Source], reachable: Mapping[str, bool]) -> list[Source]:
    """Reachable sources first, each group in its own order; unreachable ones as a last try."""
    return [s for s in sources if reachable.get(s.endpoint)] + [s for s in sources if not reachable.get(s.endpoint)]


def hf_cache_dir(env: Mapping[str, str]) -> Path:
    """huggingface_hub's cache root, read from the environment now (the library did at import)."""
    if env.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(env["HF_HUB_CACHE"]))
    if env.get("HF_HOME"):
        return Path(os.path.expanduser(env["HF_HOME"])) / "hub"
    xdg = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.path.expanduser(xdg)) / "huggingface" / "hub"


def modelscope_cache_dir(env: Mapping[str, str]) -> Path:
    return Path(os.path.expanduser(env.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope"))


def destination(manifest: Manifest, local_dir: Path | None, env: Mapping[str, str]) -> Path:
    """Where the files will be: --local-dir, or the snapshot folder in the source's own cache."""
    if local_dir is not None:
        return Path(os.path.expanduser(local_dir)).absolute()
    org_name = manifest.repo_id.replace("/", "--")
    if manifest.source.protocol == "modelscope":
        return modelscope_cache_dir(env).absolute() / "models" / org_name / "snapshots" / manifest.revision
    return hf_cache_dir(env).absolute() / f"models--{org_name}" / "snapshots" / (manifest.commit or manifest.revision)


def present(manifest: Manifest, dest: Path) -> tuple[RemoteFile, ...]:
    """Files already at the destination with the listed size (not fetched again, still verified)."""
    found = []
    for f in manifest.files:
        try:
            if (dest / f.path).stat().st_size == f.size:
                found.append(f)
        except OSError:
            pass
    return tuple(found)


def existing_parent(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path("/")


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

    def to_json(self) -> dict[str, Any]:
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
