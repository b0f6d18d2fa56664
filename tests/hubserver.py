"""A loopback fake hub: enough of the Hugging Face Hub and ModelScope APIs for the real clients.

One threaded HTTP server on 127.0.0.1 serves a tiny Qwen3-shaped repo (and any repo added with
``hub.add(repo_id, files)``) under both protocols:

  HF          GET  /api/models/{org}/{name}[/revision/{rev}]    repo info (sha, siblings)
              GET  /api/models/{org}/{name}/tree/{rev}[/{dir}]   listing (size, oid, lfs.sha256)
              HEAD /{org}/{name}/resolve/{rev}/{path}           X-Repo-Commit, ETag, Content-Length
              GET  /{org}/{name}/resolve/{rev}/{path}           body; 206 for Range: bytes=a-
  ModelScope  GET  /api/v1/models/{org}/{name}/repo/files        {"Data": {"Files": [Size, Sha256]}}
              GET  /api/v1/models/{org}/{name}/repo?FilePath=    body; 206 for Range
              GET  /api/v1/models/{org}/{name}[/revisions]       repo info, branches (old clients)

Switches (attributes; change them between runs): ``cut`` (file -> byte offset: every GET of that
file stops there and drops the connection), ``corrupt`` (file -> how many GETs serve flipped
bytes), ``missing`` (the repo does not exist: HF answers 401 to anonymous requests, as the real
Hub does; ModelScope 404), ``gated`` (401 + X-Error-Code GatedRepo for file bodies unless the
right token comes; info and listing stay public, as on the real Hub), ``hostile`` (an extra
listing entry whose name escapes the destination), ``down`` (every connection is closed
unanswered). ``served`` counts body bytes sent per file; ``log`` keeps
(method, path) of every request.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO_ID = "Qwen/Qwen3-0.6B"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MS_REVISION = "master"

# A Qwen3 config shrunk to toy size: the same keys as Qwen/Qwen3-0.6B's config.json.
TINY_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "torch_dtype": "float16",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 128,
    "tie_word_embeddings": True,
    "max_position_embeddings": 512,
    "rope_theta": 1000000,
    "rms_norm_eps": 1e-06,
    "hidden_act": "silu",
    "attention_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


@dataclass(frozen=True)
class RepoFile:
    """A file of a served repo. `size` beyond `data`: a header-only safetensors shard that
    stands for a real-sized one (zeros after the header; its listed sha256 is the header's)."""

    path: str
    data: bytes
    lfs: bool
    declared_size: int | None = None

    @property
    def size(self) -> int:
        return self.declared_size or len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def read(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop), zeros past the data."""
        piece = self.data[start:stop]
        return piece + b"\0" * max(0, min(stop, self.size) - max(start, len(self.data)))

    @property
    def git_oid(self) -> str:
        """Git's blob id: sha1 of "blob <size>\\0" + content (what the Hub lists as `oid`)."""
        return hashlib.sha1(b"blob %d\0" % self.size + self.data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


def _safetensors_shards() -> dict[str, bytes]:
    """Two fp16 shards with the tensor names and shapes vLLM's Qwen3 loader expects."""
    import numpy as np
    from safetensors.numpy import save

    c = TINY_CONFIG
    h, inter, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    rng = np.random.default_rng(0)

    def t(*shape):
        return rng.standard_normal(shape).astype(np.float16)

    def layer(i):
        p = f"model.layers.{i}."
        return {
            p + "self_attn.q_proj.weight": t(q, h),
            p + "self_attn.k_proj.weight": t(kv, h),
            p + "self_attn.v_proj.weight": t(kv, h),
            p + "self_attn.o_proj.weight": t(h, q),
            p + "self_attn.q_norm.weight": t(d),
            p + "self_attn.k_norm.weight": t(d),
            p + "mlp.gate_proj.weight": t(inter, h),
            p + "mlp.up_proj.weight": t(inter, h),
            p + "mlp.down_proj.weight": t(h, inter),
            p + "input_layernorm.weight": t(h),
            p + "post_attention_layernorm.weight": t(h),
        }

    first = {"model.embed_tokens.weight": t(c["vocab_size"], h), **layer(0)}
    second = {**layer(1), "model.norm.weight": t(h)}
    return {
        "model-00001-of-00002.safetensors": save(first),
        "model-00002-of-00002.safetensors": save(second),
    }


def tiny_repo() -> dict[str, RepoFile]:
    """The files of the fake repo: what vLLM needs, plus what a download must leave alone."""
    shards = _safetensors_shards()
    index = {"metadata": {"total_size": sum(len(b) for b in shards.values())}, "weight_map": {}}
    for name, blob in shards.items():
        header_len = int.from_bytes(blob[:8], "little")
        for tensor in json.loads(blob[8 : 8 + header_len]):
            if tensor != "__metadata__":
                index["weight_map"][tensor] = name
    vocab = {f"t{i}": i for i in range(TINY_CONFIG["vocab_size"])}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
    }
    text = {
        "config.json": TINY_CONFIG,
        "generation_config.json": {
            "bos_token_id": 1,
            "eos_token_id": [2],
            "do_sample": True,
            "temperature": 0.6,
            "top_p": 0.95,
            "top_k": 20,
        },
        "tokenizer_config.json": {
            "tokenizer_class": "Qwen2Tokenizer",
            "model_max_length": 512,
            "eos_token": "t2",
            "pad_token": "t0",
            "chat_template": "{{ messages }}",
        },
        "tokenizer.json": tokenizer,
        "vocab.json": vocab,
        "model.safetensors.index.json": index,
    }
    files = {p: RepoFile(p, json.dumps(v, indent=2).encode(), lfs=False) for p, v in text.items()}
    files["merges.txt"] = RepoFile("merges.txt", b"#version: 0.2\nt 1\n", lfs=False)
    for name, blob in shards.items():
        files[name] = RepoFile(name, blob, lfs=True)
    # Present in real Qwen repos (or their forks) but not needed by vLLM: never to be fetched.
    for path, data, lfs in (
        (".gitattributes", b"*.safetensors filter=lfs\n", False),
        ("README.md", b"# tiny\n", False),
        ("LICENSE", b"Apache-2.0\n", False),
        ("pytorch_model.bin", b"\0" * 4096, True),
        ("original/consolidated.00.pth", b"\1" * 4096, True),
        ("gguf/qwen3-tiny-q4_k_m.gguf", b"GGUF" + b"\2" * 4092, True),
    ):
        files[path] = RepoFile(path, data, lfs)
    return files


_FLIP = bytes(b ^ 0xFF for b in range(256))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer

    def verify_request(self, request, client_address) -> bool:
        return not self.hub.down  # False: socketserver closes the connection unanswered


class HubServer:
    """Start with ``with HubServer() as hub:``; ``hub.url`` is the endpoint for both protocols."""

    def __init__(
        self,
        repo_id: str = REPO_ID,
        files: dict[str, RepoFile] | None = None,
        token: str | None = None,
    ):
        self.repo_id = repo_id
        self.files = files if files is not None else tiny_repo()
        self.repos: dict[str, dict[str, RepoFile]] = {repo_id: self.files}
        self.token = token  # the token that opens a gated repo
        self.cut: dict[str, int] = {}
        self.corrupt: dict[str, int] = {}
        self.missing = False
        self.gated = False
        self.hostile: str | None = None
        self.down = False
        self.served: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[str, str]] = []
        self.requests: list[tuple[str, str, str]] = []  # (method, file path, Range header) of file bodies
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def add(self, repo_id: str, files: dict[str, RepoFile]) -> HubServer:
        """Serve another repo beside the first."""
        self.repos[repo_id] = files
        return self

    def listing(self, repo_id: str | None = None) -> list[RepoFile]:
        files = list(self.repos[repo_id or self.repo_id].values())
        if self.hostile:
            files.append(RepoFile(self.hostile, b'{"pwned": true}', lfs=False))
        return files

    def ranges(self, path: str) -> list[str]:
        """The Range headers of the GETs of one file, in order."""
        return [r for m, p, r in self.requests if m == "GET" and p == path]

    def body_bytes(self) -> int:
        return sum(self.served.values())

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self.served[path] += n


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    repo_id: str = ""  # the repo the request names

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    # ---- plumbing ----------------------------------------------------------------------------

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._route()

    def _route(self) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        with self.hub._lock:
            self.hub.log.append((self.command, self.path))
        repo = r"(?P<repo>[^/]+/[^/]+)"
        routes = (
            (rf"/api/v1/models/{repo}/repo/files", self._ms_files),
            (rf"/api/v1/models/{repo}/repo", self._ms_file),
            (rf"/api/v1/models/{repo}/revisions", self._ms_revisions),
            (rf"/api/v1/models/{repo}", self._ms_info),
            (rf"/api/models/{repo}/tree/(?P<rev>[^/]+)(?:/(?P<dir>.*))?", self._hf_tree),
            (rf"/api/models/{repo}(?:/revision/(?P<rev>[^/]+))?", self._hf_info),
            (rf"/{repo}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._hf_file),
        )
        for pattern, handler in routes:
            m = re.fullmatch(pattern, path)
            if m and m.group("repo") in self.hub.repos:
                self.repo_id = m.group("repo")
                return handler(query, **{k: v for k, v in m.groupdict().items() if k != "repo"})
        if path.startswith("/api/models/") or "/resolve/" in path:  # another repo: none here
            return self._repo_missing()
        if path.startswith("/api/v1/"):
            return self._not_found()
        self._send(404, b"not found", content_type="text/plain")

    # ---- bodies: ranges, cuts, corruption --------------------------------------------------------

    def _authorized(self) -> bool:
        if not self.hub.gated:
            return True
        auth = self.headers.get("Authorization", "")
        cookie = self.headers.get("Cookie", "")
        token = self.hub.token
        return bool(token) and (auth == f"Bearer {token}" or f"m_session_id={token}" in cookie)

    def _body(self, f: RepoFile, headers: dict) -> None:
        start = 0
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        with self.hub._lock:
            self.hub.requests.append((self.command, f.path, self.headers.get("Range", "")))
        if rng:
            start = int(rng.group(1))
            end = min(int(rng.group(2)) + 1, f.size) if rng.group(2) else f.size
            if start >= f.size:
                return self._send(416, b"", {**headers, "Content-Range": f"bytes */{f.size}"})
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{f.size}"}
        else:
            status, end = 200, f.size
        flip = False
        if self.command == "GET":
            with self.hub._lock:
                left = self.hub.corrupt.get(f.path, 0)
                if left:
                    self.hub.corrupt[f.path] = left - 1
            flip = bool(left)  # same size, different bytes
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        stop = min(end, self.hub.cut.get(f.path, end))
        chunk = 8192
        for pos in range(start, max(start, stop), chunk):
            piece = f.read(pos, min(pos + chunk, stop))
            self.wfile.write(piece.translate(_FLIP) if flip else piece)
            self.hub._count(f.path, len(piece))
        if stop < end:  # the cut: drop the connection mid-body
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _repo_missing(self) -> None:
        """What huggingface.co answers for a repo that does not exist (or is private): to an
        anonymous request 401 with no X-Error-Code (recorded from the real Hub); with a token,
        404 + X-Error-Code RepoNotFound. huggingface_hub raises RepositoryNotFoundError for both."""
        if self.headers.get("Authorization"):
            return self._not_found()
        msg = "Invalid username or password."
        self._json({"error": msg}, 401, {"X-Error-Message": msg})

    def _not_found(self, code: str = "RepoNotFound") -> None:
        msg = "Repository not found" if code == "RepoNotFound" else "Entry not found"
        self._json(
            {
                "error": msg,
                "Code": 10010205001,
                "Message": "Model does not exist.",
                "Success": False,
            },
            404,
            {"X-Error-Code": code, "X-Error-Message": msg},
        )

    # ---- Hugging Face ----------------------------------------------------------------------------

    def _hf_rev_ok(self, rev: str | None) -> bool:
        if rev in (None, "main", COMMIT):
            return True
        self._json(
            {"error": f"Invalid rev id: {rev}"},
            404,
            {"X-Error-Code": "RevisionNotFound", "X-Error-Message": f"Invalid rev id: {rev}"},
        )
        return False

    def _hf_entry(self, f: RepoFile, expand_lfs: bool = True) -> dict:
        entry = {"type": "file", "path": f.path, "size": f.size, "oid": f.git_oid}
        if f.lfs and expand_lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
        return entry

    def _hf_info(self, query, rev=None) -> None:
        if self.hub.missing:
            return self._repo_missing()
        if not self._hf_rev_ok(rev):
            return
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in self.hub.listing(self.repo_id):
            s = {"rfilename": f.path}
            if blobs:
                s.update(size=f.size, blobId=f.git_oid)
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
            siblings.append(s)
        self._json(
            {
                "_id": "0" * 24,
                "id": self.repo_id,
                "modelId": self.repo_id,
                "sha": COMMIT,
                "private": False,
                "gated": "manual" if self.hub.gated else False,
                "disabled": False,
                "tags": ["safetensors", "qwen3"],
                "siblings": siblings,
            }
        )

    def _hf_tree(self, query, rev, dir=None) -> None:
        if self.hub.missing:
            return self._repo_missing()
        if not self._hf_rev_ok(rev):
            return
        prefix = (dir or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries, dirs = [], set()
        for f in self.hub.listing(self.repo_id):
            if prefix and not f.path.startswith(prefix + "/"):
                continue
            rest = f.path[len(prefix) + 1 :] if prefix else f.path
            if "/" in rest and not recursive:
                dirs.add((prefix + "/" if prefix else "") + rest.split("/")[0])
                continue
            if recursive and "/" in rest:
                parts = f.path.split("/")
                for i in range(1, len(parts)):
                    dirs.add("/".join(parts[:i]))
            entries.append(self._hf_entry(f))
        folders = [
            {"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0}
            for d in sorted(dirs)
        ]
        self._json(folders + entries)

    def _hf_file(self, query, rev, file) -> None:
        if self.hub.missing:
            return self._repo_missing()
        if not self._hf_rev_ok(rev):
            return
        f = {x.path: x for x in self.hub.listing(self.repo_id)}.get(file)
        if f is None:
            return self._not_found("EntryNotFound")
        if not self._authorized():
            msg = (
                f"Access to model {self.repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in."
            )
            return self._json({"error": msg}, 401, {"X-Error-Code": "GatedRepo", "X-Error-Message": msg})
        self._body(f, {"X-Repo-Commit": COMMIT, "ETag": f'"{f.etag}"'})

    # ---- ModelScope ------------------------------------------------------------------------------

    def _ms_denied(self) -> bool:
        if self.hub.missing:
            self._json({"Code": 10010205001, "Message": "Model does not exist.", "Success": False}, 404)
            return True
        if not self._authorized():
            self._json({"Code": 10010101003, "Message": "User not logged in.", "Success": False}, 401)
            return True
        return False

    def _ms_files(self, query) -> None:
        if self._ms_denied():
            return
        root = (query.get("Root", [""])[0] or "").strip("/")
        files = [
            {
                "Name": f.path.rsplit("/", 1)[-1],
                "Path": f.path,
                "Type": "blob",
                "Size": f.size,
                "Sha256": f.sha256,
                "Revision": COMMIT,
                "IsLFS": f.lfs,
                "Mode": "33188",
            }
            for f in self.hub.listing(self.repo_id)
            if not root or f.path.startswith(root + "/")
        ]
        self._json({"Code": 200, "Data": {"Files": files}, "Message": "success", "Success": True})

    def _ms_file(self, query) -> None:
        if self._ms_denied():
            return
        file = query.get("FilePath", [""])[0]
        f = {x.path: x for x in self.hub.listing(self.repo_id)}.get(file)
        if f is None:
            return self._json({"Code": 10010205001, "Message": "file not found", "Success": False}, 404)
        self._body(f, {})

    def _ms_revisions(self, query) -> None:
        if self._ms_denied():
            return
        self._json(
            {
                "Code": 200,
                "Success": True,
                "Data": {
                    "RevisionMap": {
                        "Branches": [{"Revision": MS_REVISION, "CreatedAt": 1700000000}],
                        "Tags": [],
                    }
                },
            }
        )

    def _ms_info(self, query) -> None:
        if self._ms_denied():
            return
        owner, name = self.repo_id.split("/")
        self._json(
            {
                "Code": 200,
                "Success": True,
                "Data": {
                    "Id": 1,
                    "Name": name,
                    "Path": owner,
                    "ChineseName": name,
                    "Revision": MS_REVISION,
                },
            }
        )
