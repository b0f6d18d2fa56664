"""examples/: the CI gate, the Kubernetes deploy script and the sample profile, run for real."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hubserver import HubServer

import qwdeploy
from qwdeploy import PlanRequest
from qwdeploy.errors import ExitCode
from qwdeploy.planning import profiles

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
QWDEPLOY = f"{sys.executable} -m qwdeploy"


def _run(script, *args, tmp_path, env=None, path=None):
    full = dict(os.environ, QWDEPLOY=QWDEPLOY, PYTHONPATH=str(EXAMPLES.parent), **(env or {}))
    if path is not None:
        full["PATH"] = path
    return subprocess.run(
        [shutil.which("bash"), str(EXAMPLES / script), *args],
        cwd=tmp_path,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _bin_without_jq(tmp_path) -> str:
    """A PATH with what the scripts need but no jq: exercises the python3 reader."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sed", "mktemp", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (bin_dir / "python3").symlink_to(sys.executable)
    return str(bin_dir)


@pytest.mark.parametrize("reader", ["jq", "python3"])
def test_ci_gate_passes_a_model_that_fits_and_reports_its_figures(tmp_path, reader):
    if reader == "jq" and shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    path = _bin_without_jq(tmp_path) if reader == "python3" else None
    out = tmp_path / "github_output"
    r = _run(
        "ci-gate.sh",
        "Qwen/Qwen3-8B",
        "--gpu",
        "H100",
        tmp_path=tmp_path,
        path=path,
        env={"GITHUB_OUTPUT": str(out)},
    )
    assert r.returncode == 0, r.stderr
    assert "max_model_len=32768" in r.stdout and "max_model_len=32768" in out.read_text()
    assert json.loads((tmp_path / "plan.json").read_text())["fits"] is True


@pytest.mark.parametrize("reader", ["jq", "python3"])
def test_ci_gate_stops_the_pipeline_with_exit_3_when_the_model_does_not_fit(tmp_path, reader):
    if reader == "jq" and shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    path = _bin_without_jq(tmp_path) if reader == "python3" else None
    r = _run("ci-gate.sh", "Qwen/Qwen3-32B", "--gpu", "L40S", tmp_path=tmp_path, path=path)
    assert r.returncode == 3
    assert "does not fit; not deploying" in r.stderr and "Qwen/Qwen3-32B-AWQ" in r.stderr


def test_ci_gate_stops_with_exit_4_when_the_plan_misses_its_profile(tmp_path):
    r = _run("ci-gate.sh", "Qwen/Qwen3-14B-AWQ", "--gpu", "L4", tmp_path=tmp_path)
    assert r.returncode == 4 and "fits but misses its profile" in r.stderr and "wants 8" in r.stderr


def test_ci_gate_deploys_a_plan_below_its_profile_when_allowed(tmp_path):
    r = _run("ci-gate.sh", "Qwen/Qwen3-14B-AWQ", "--gpu", "L4", tmp_path=tmp_path, env={"ALLOW_BELOW_PROFILE": "1"})
    assert r.returncode == 0 and "max_model_len=32768" in r.stdout


def test_ci_gate_stops_below_the_pipelines_own_minimum(tmp_path):
    r = _run(
        "ci-gate.sh",
        "Qwen/Qwen3-8B",
        "--gpu",
        "H100",
        tmp_path=tmp_path,
        env={"MIN_CONCURRENCY": "100"},
    )
    assert r.returncode == 3 and "below MIN_CONCURRENCY 100" in r.stderr


def test_ci_gate_passes_qwdeploys_error_code_through(tmp_path):
    with HubServer() as hub:  # a repo id qwdeploy does not ship is looked up on the hub: not there
        r = _run("ci-gate.sh", "Qwen/Qwen3-9000B", "--gpu", "H100", tmp_path=tmp_path, env={"HF_ENDPOINT": hub.url})
    assert r.returncode == ExitCode.NOT_FOUND and "unknown model" in r.stderr


def test_ci_gate_gates_a_multi_node_plan(tmp_path):
    r = _run(
        "ci-gate.sh",
        "Qwen/Qwen3-32B",
        "--profile",
        "long-context",
        "--gpu",
        "L40S",
        "--nodes",
        "2",
        "--num-gpus-per-node",
        "1",
        tmp_path=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "pipeline_parallel_size=2" in r.stdout and "max_model_len=131072" in r.stdout


def _fake_kubectl(tmp_path) -> Path:
    bin_dir = tmp_path / "kbin"
    bin_dir.mkdir()
    fake = bin_dir / "kubectl"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$0.args"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


def test_deploy_k8s_exports_then_hands_the_manifests_to_kubectl_dry_run(tmp_path):
    fake = _fake_kubectl(tmp_path)
    out = tmp_path / "m.yaml"
    r = _run(
        "deploy-k8s.sh",
        "Qwen/Qwen3-8B",
        "--gpu",
        "H100",
        tmp_path=tmp_path,
        env={"OUT": str(out)},
        path=f"{fake.parent}:{os.environ['PATH']}",
    )
    assert r.returncode == 0, r.stderr
    assert fake.with_suffix(".args").read_text().split() == [
        "apply",
        "-f",
        str(out),
        "--dry-run=client",
    ]
    kinds = [d["kind"] for d in yaml.safe_load_all(out.read_text())]
    assert kinds == ["Deployment", "Service"]


def test_deploy_k8s_never_calls_kubectl_when_the_model_does_not_fit(tmp_path):
    fake = _fake_kubectl(tmp_path)
    r = _run(
        "deploy-k8s.sh",
        "Qwen/Qwen3-32B",
        "--gpu",
        "L40S",
        tmp_path=tmp_path,
        path=f"{fake.parent}:{os.environ['PATH']}",
    )
    assert r.returncode == 3 and not fake.with_suffix(".args").exists()


def test_sample_profile_loads_and_plans():
    prof = profiles.load(str(EXAMPLES / "profiles" / "rag.yaml"))
    assert (prof.max_model_len, prof.min_concurrency, prof.reasoning_parser) == (16384, 16, None)
    plan = qwdeploy.plan(PlanRequest("Qwen/Qwen3-14B", profile=str(EXAMPLES / "profiles" / "rag.yaml"), gpu="L40S"))
    assert plan.fits and plan.max_model_len == 16384


def test_github_actions_example_is_valid_yaml_running_both_scripts():
    steps = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())["jobs"]["deploy"]["steps"]
    runs = " ".join(s.get("run", "") for s in steps)
    assert "examples/ci-gate.sh" in runs and "examples/deploy-k8s.sh" in runs
