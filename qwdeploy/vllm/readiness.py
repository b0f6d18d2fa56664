"""Is the server up: the OpenAI endpoints vLLM serves, and the port it will bind (I/O)."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

from qwdeploy.errors import ExitCode, QwdeployError

HTTP_TIMEOUT_S = 5.0
WARMUP_TIMEOUT_S = 120.0  # the first request may still JIT a kernel
WARMUP_PROMPT = [1, 2, 3]  # token ids: valid for any vocabulary, no tokenizer needed


def _http(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    api_key: str | None = None,
    timeout: float = HTTP_TIMEOUT_S,
) -> tuple[int | None, str]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError, ValueError) as e:
        return None, str(getattr(e, "reason", e))


def model_listed(base_url: str, name: str, api_key: str | None = None) -> bool:
    status, text = _http("GET", f"{base_url}/v1/models", api_key=api_key)
    if status != 200:
        return False
    try:
        return any(m.get("id") == name for m in json.loads(text).get("data", []))
    except (ValueError, AttributeError):
        return False


def warm_up(base_url: str, name: str, api_key: str | None = None) -> tuple[bool, str]:
    """One short completion from token ids (works without a tokenizer)."""
    body = {"model": name, "prompt": WARMUP_PROMPT, "max_tokens": 2, "temperature": 0}
    status, text = _http("POST", f"{base_url}/v1/completions", body, api_key, WARMUP_TIMEOUT_S)
    return status == 200, f"HTTP {status}: {text[:200]}" if status else text[:200]


def check_port(host: str, port: int) -> None:
    """Fail in a second, not after vLLM's ~8 s of imports, when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind((host, port))
        except OSError as e:
            raise QwdeployError(
                f"cannot listen on {host}:{port}: {e.strerror}",
                hint="pick another --port, or stop what listens there",
                exit_code=ExitCode.SERVE_FAILED,
            ) from None
