"""`qwdeploy export`: golden outputs, checked by real parsers and validators where they install.

Goldens: tests/golden/export/. Regenerate with QWDEPLOY_UPDATE_GOLDEN=1 (the rewritten tests
are reported as skipped, never as passed: review the diff, then run again without it).
Validators: systemd-analyze verify (systemd), compose-spec (a strict Compose parser),
kubernetes-validate (the Kubernetes OpenAPI schemas); each test skips with the reason when its
validator is missing.
"""

import dataclasses
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import fake_pynvml
import pytest
import yaml

from qwdeploy import PlanRequest, export, plan
from qwdeploy.cli import app
from qwdeploy.gpus import local, nvml, specs
from qwdeploy.vllm import ray

GOLDEN = Path(__file__).parent / "golden" / "export"
K8S_VERSION = "1.30.0"
CASES = {
    "qwen3-8b-chat-h100": ["Qwen/Qwen3-8B", "--profile", "chat", "--gpu", "H100"],
    "qwen3-32b-long-context-2xh100": [
        "Qwen/Qwen3-32B",
        "--profile",
        "long-context",
        "--gpu",
        "H100",
        "--num-gpus",
        "2",
    ],
}
MULTI = [
    "Qwen/Qwen3-235B-A22B",
    "--profile",
    "chat",
    "--gpu",
    "H100",
    "--nodes",
    "2",
    "--num-gpus-per-node",
    "8",
]
SUFFIX = {"systemd": "service", "compose": "compose.yaml", "k8s": "k8s.yaml"}
GOLDENS = [(fmt, case, CASES[case]) for case in CASES for fmt in export.FORMATS] + [
    ("k8s", "qwen3-235b-a22b-chat-2x8xh100-hpa", [*MULTI, "--hpa"])
]


def _export(runner, fmt, args):
    result = runner.invoke(app, ["export", fmt, *args])
    assert result.exit_code == 0, result.stderr
    return result.stdout


def _plan(args):
    """The Plan behind a CLI case (same code path as the command)."""
    opts = dict(zip(args[1::2], args[2::2], strict=False))
    return plan(
        PlanRequest(
            args[0],
            profile=opts.get("--profile", "chat"),
            gpu=opts.get("--gpu"),
            num_gpus=int(opts["--num-gpus"]) if "--num-gpus" in opts else None,
            nodes=int(opts.get("--nodes", 1)),
            gpus_per_node=int(opts["--num-gpus-per-node"]) if "--num-gpus-per-node" in opts else None,
        )
    )


def _golden(fmt, case) -> Path:
    return GOLDEN / f"{case}.{SUFFIX[fmt]}"


# ---- goldens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, case, args", GOLDENS, ids=[f"{f}-{c}" for f, c, _ in GOLDENS])
def test_export_matches_its_golden(runner, fmt, case, args):
    text = _export(runner, fmt, args)
    golden = _golden(fmt, case)
    if os.environ.get("QWDEPLOY_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
        pytest.skip(f"rewrote {golden.name}: review the diff, then run without QWDEPLOY_UPDATE_GOLDEN")
    assert golden.exists(), f"no golden {golden}: run once with QWDEPLOY_UPDATE_GOLDEN=1"
    assert text == golden.read_text()


def test_export_is_the_same_on_every_run_and_with_output_file(runner, tmp_path):
    args = CASES["qwen3-8b-chat-h100"]
    first, second = _export(runner, "k8s", args), _export(runner, "k8s", args)
    out = tmp_path / "m.yaml"
    result = runner.invoke(app, ["export", "k8s", *args, "-o", str(out)])
    assert result.exit_code == 0 and result.stdout == ""
    assert first == second == out.read_text()


def test_export_of_a_plan_that_does_not_fit_writes_nothing_and_exits_3(runner):
    result = runner.invoke(app, ["export", "k8s", "Qwen/Qwen3-32B", "--gpu", "L40S"])
    assert result.exit_code == 3 and result.stdout == ""
    assert "does not fit" in result.stderr


def test_unknown_export_format_is_a_usage_error(runner):
    result = runner.invoke(app, ["export", "helm", "Qwen/Qwen3-8B", "--gpu", "H100"])
    assert result.exit_code == 2 and "systemd, compose, k8s" in result.stderr


@pytest.mark.parametrize("fmt", ["systemd", "compose"])
def test_single_machine_exports_refuse_a_multi_node_plan_with_a_hint(runner, fmt):
    result = runner.invoke(app, ["export", fmt, *MULTI])
    assert result.exit_code == 1 and "export k8s" in result.stderr


def test_no_export_carries_an_api_key_on_a_command_line():
    for fmt, case, _ in GOLDENS:
        assert "--api-key" not in _golden(fmt, case).read_text()


# ---- systemd ----------------------------------------------------------------------------------


def _unit(case) -> dict[str, list[str]]:
    """Key -> values of a unit file (continuation lines joined), comments dropped."""
    text = re.sub(r"\\\n", " ", _golden("systemd", case).read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("case", CASES)
def test_systemd_unit_passes_systemd_analyze_verify(case, tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = tmp_path / f"{case}.service"
    unit.write_text(_golden("systemd", case).read_text())
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    version = int(
        re.search(
            r"systemd (\d+)",
            subprocess.run([tool, "--version"], capture_output=True, text=True).stdout,
        ).group(1)
    )
    newer = {"RestartSteps", "RestartMaxDelaySec"} if version < 254 else set()
    problems = [line for line in result.stderr.splitlines() if not any(f"Unknown key '{k}'" in line for k in newer)]
    assert result.returncode == 0 and problems == []


@pytest.mark.parametrize("case", CASES)
def test_systemd_unit_restarts_always_with_backoff_and_a_credential(case):
    unit = _unit(case)
    assert unit["Restart"] == ["always"] and unit["RestartSec"] == ["10s"]
    assert unit["RestartMaxDelaySec"] == ["5min"] and unit["StartLimitBurst"] == ["10"]
    assert unit["LoadCredential"] == ["api-key:/etc/qwdeploy/api-key"]
    env = dict(e.split("=", 1) for e in unit["Environment"])
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"].endswith("/huggingface")


def _fake_vllm(tmp_path) -> Path:
    """An executable that records its argv and the API key it was given."""
    fake = tmp_path / "vllm"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$0.argv"\nprintf "%s" "$VLLM_API_KEY" > "$0.key"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


def test_systemd_execstart_hands_vllm_the_plan_argv_and_the_key_from_the_credential(tmp_path):
    case = "qwen3-32b-long-context-2xh100"
    (line,) = _unit(case)["ExecStart"]
    # systemd's unescaping for this unit: $$ -> $, %% -> %, quotes like POSIX sh (no backslashes)
    words = shlex.split(line.replace("$$", "$").replace("%%", "%"))
    fake = _fake_vllm(tmp_path)
    words[words.index("/opt/vllm/bin/vllm")] = str(fake)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api-key").write_text("s3cret")
    subprocess.run(words, check=True, env={"CREDENTIALS_DIRECTORY": str(creds), "PATH": "/usr/bin:/bin"})
    plan = _plan(CASES[case])
    assert fake.with_suffix(".argv").read_text().splitlines() == [
        "serve",
        *export.vllm_argv(plan, export.ExportOptions()),
    ]
    assert fake.with_suffix(".key").read_text() == "s3cret"


def test_systemd_sets_cuda_visible_devices_for_a_plan_of_this_machine():
    plan = dataclasses.replace(_plan(CASES["qwen3-32b-long-context-2xh100"]), local=True)
    assert "Environment=CUDA_VISIBLE_DEVICES=0,1\n" in export.systemd(plan)


# ---- compose ----------------------------------------------------------------------------------


def _compose(case) -> dict:
    return yaml.safe_load(_golden("compose", case).read_text())


@pytest.mark.parametrize("case", CASES)
def test_compose_file_has_the_expected_service_keys(case):
    doc = _compose(case)
    plan = _plan(CASES[case])
    (name,) = doc["services"]
    svc = doc["services"][name]
    assert {
        "image",
        "entrypoint",
        "command",
        "environment",
        "ports",
        "volumes",
        "ipc",
        "deploy",
        "healthcheck",
        "restart",
        "secrets",
    } <= svc.keys()
    assert svc["image"] == "vllm/vllm-openai:v0.26.0" and svc["ipc"] == "host"
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device == {
        "driver": "nvidia",
        "count": plan.tensor_parallel_size,
        "capabilities": ["gpu"],
    }
    assert "/v1/models" in " ".join(svc["healthcheck"]["test"])
    assert any(v.endswith(":/root/.cache/huggingface") for v in svc["volumes"])
    assert doc["secrets"] == {"api-key": {"file": "./api-key"}}


@pytest.mark.parametrize("case", CASES)
def test_compose_file_parses_with_a_strict_compose_spec_parser(case):
    compose_spec = pytest.importorskip("compose_spec", reason="pip install compose-spec")
    # `docker compose` interpolates before it parses: HF_HOME unset, HOME=/home/u.
    text = _golden("compose", case).read_text()
    text = text.replace("${HF_HOME:-${HOME}/.cache/huggingface}", "/home/u/.cache/huggingface")
    assert re.findall(r"(?<!\$)\$\{", text) == []  # nothing else to interpolate
    parsed = compose_spec.PyCompose.from_yaml(text.replace("$$", "$"))
    parsed.validate()
    assert list(parsed.services) == [export.default_name(_plan(CASES[case]))]


@pytest.mark.parametrize("case", CASES)
def test_compose_healthcheck_waits_twice_the_predicted_cold_start(case):
    svc = next(iter(_compose(case)["services"].values()))
    plan = _plan(CASES[case])
    assert int(svc["healthcheck"]["start_period"].rstrip("s")) >= 2 * plan.performance["predicted_cold_start_s"]


def test_compose_entrypoint_reads_the_key_from_the_secret_and_runs_the_plan(tmp_path):
    case = "qwen3-8b-chat-h100"
    svc = next(iter(_compose(case)["services"].values()))
    secret = tmp_path / "api-key"
    secret.write_text("k3y\n")
    fake = _fake_vllm(tmp_path)
    unescape = [w.replace("$$", "$") for w in svc["entrypoint"] + svc["command"]]
    unescape[2] = unescape[2].replace("/run/secrets/api-key", str(secret))
    subprocess.run(unescape, check=True, env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    plan = _plan(CASES[case])
    assert fake.with_suffix(".argv").read_text().splitlines() == [
        "serve",
        *export.vllm_argv(plan, export.ExportOptions()),
    ]
    assert fake.with_suffix(".key").read_text() == "k3y"


def test_compose_reserves_the_planned_gpus_by_id_on_this_machine():
    plan = dataclasses.replace(_plan(CASES["qwen3-32b-long-context-2xh100"]), local=True)
    svc = next(iter(yaml.safe_load(export.compose(plan))["services"].values()))
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["device_ids"] == ["0", "1"] and "CUDA_VISIBLE_DEVICES" not in svc["environment"]


# ---- Kubernetes -------------------------------------------------------------------------------


def _docs(fmt_case) -> list[dict]:
    return list(yaml.safe_load_all(_golden("k8s", fmt_case).read_text()))


def _validate(doc: dict) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    kv.validate(doc, K8S_VERSION, strict=True)


def _pod_specs(doc: dict) -> list[dict]:
    if doc["kind"] == "Deployment":
        return [doc["spec"]["template"]]
    if doc["kind"] == "LeaderWorkerSet":
        t = doc["spec"]["leaderWorkerTemplate"]
        return [t["leaderTemplate"], t["workerTemplate"]]
    return []


K8S_CASES = [c for f, c, _ in GOLDENS if f == "k8s"]


@pytest.mark.parametrize("case", K8S_CASES)
def test_k8s_manifests_validate_against_the_kubernetes_schemas(case):
    for doc in _docs(case):
        if doc["apiVersion"].startswith("leaderworkerset."):
            # A CRD: its pod templates are core PodTemplateSpecs, validated as such.
            for i, template in enumerate(_pod_specs(doc)):
                _validate(
                    {
                        "apiVersion": "v1",
                        "kind": "PodTemplate",
                        "metadata": {"name": f"{doc['metadata']['name']}-{i}"},
                        "template": template,
                    }
                )
        else:
            _validate(doc)


def test_k8s_without_an_api_key_uses_http_probes_and_still_validates():
    plan = _plan(CASES["qwen3-8b-chat-h100"])
    docs = list(yaml.safe_load_all(export.kubernetes(plan, export.ExportOptions(api_key=False, hpa=True))))
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models"
    for doc in docs:
        _validate(doc)


@pytest.mark.parametrize("case", list(CASES))
def test_k8s_deployment_requests_the_plans_gpus_and_probes_v1_models(case):
    deployment, service = _docs(case)
    plan = _plan(CASES[case])
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(plan.tensor_parallel_size)
    for probe in ("startupProbe", "readinessProbe"):
        assert "http://127.0.0.1:8000/v1/models" in c[probe]["exec"]["command"][-1]
    start = c["startupProbe"]
    waited = start["initialDelaySeconds"] + start["failureThreshold"] * start["periodSeconds"]
    assert waited >= 2 * plan.performance["predicted_cold_start_s"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["hf-cache"]["persistentVolumeClaim"]["claimName"] == "huggingface-cache"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_k8s_api_key_comes_from_a_secret():
    (deployment, _) = _docs("qwen3-8b-chat-h100")
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    key = next(e for e in env if e["name"] == "VLLM_API_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "qwen3-8b-api-key", "key": "api-key"}


def test_k8s_cache_pvc_name_is_an_option(runner):
    text = _export(runner, "k8s", [*CASES["qwen3-8b-chat-h100"], "--cache-pvc", "models"])
    pod = next(yaml.safe_load_all(text))["spec"]["template"]["spec"]
    assert {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "models"}} in pod["volumes"]


def test_k8s_multi_node_is_a_leader_worker_set_of_one_pod_per_node():
    lws, service, hpa = _docs("qwen3-235b-a22b-chat-2x8xh100-hpa")
    assert (lws["apiVersion"], lws["kind"]) == ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2 and group["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader = group["leaderTemplate"]["spec"]["containers"][0]
    worker = group["workerTemplate"]["spec"]["containers"][0]
    assert "ray start --head --port=6379" in leader["command"][2]
    assert leader["args"][leader["args"].index("--distributed-executor-backend") + 1] == "ray"
    assert 'ray start --address="$LWS_LEADER_ADDRESS:6379"' in worker["command"][2]
    for c in (leader, worker):
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert service["spec"]["selector"]["role"] == "leader"
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "LeaderWorkerSet"


def test_k8s_leader_args_are_the_multi_node_serve_args():
    lws = _docs("qwen3-235b-a22b-chat-2x8xh100-hpa")[0]
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    plan = _plan(MULTI)
    assert leader["args"] == ray.serve_args(plan) + ["--host", "0.0.0.0", "--port", "8000"]


def test_k8s_hpa_scales_on_vllms_waiting_requests():
    hpa = _docs("qwen3-235b-a22b-chat-2x8xh100-hpa")[-1]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "vllm:num_requests_waiting"
    assert hpa["spec"]["behavior"]["scaleUp"]["policies"][0]["value"] == 1


def test_plan_json_and_export_agree_on_the_vllm_arguments(runner):
    args = CASES["qwen3-8b-chat-h100"]
    plan = json.loads(runner.invoke(app, ["plan", *args, "--json"]).stdout)
    deployment = next(yaml.safe_load_all(_export(runner, "k8s", args)))
    assert (
        deployment["spec"]["template"]["spec"]["containers"][0]["args"][: len(plan["vllm_args"])] == plan["vllm_args"]
    )


# ---- systemd runs a vLLM its install steps create; --vllm-bin -------------------------------------


def test_systemd_install_steps_create_the_venv_whose_vllm_execstart_runs():
    text = _golden("systemd", "qwen3-8b-chat-h100").read_text()
    venv = re.search(r"^#   sudo python3 -m venv (\S+)", text, re.M).group(1)
    version = re.escape(_plan(CASES["qwen3-8b-chat-h100"]).vllm.version)
    assert re.search(rf"^#   sudo {venv}/bin/pip install 'vllm=={version}'$", text, re.M)
    assert _unit("qwen3-8b-chat-h100")["ExecStart"][0].split('exec "$$0" "$$@"\' ')[1].startswith(f"{venv}/bin/vllm ")


def _verify(tool, unit_text, tmp_path) -> list[str]:
    unit = tmp_path / "q.service"
    unit.write_text(unit_text)
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    return [ln for ln in result.stderr.splitlines() if "Unknown key 'Restart" not in ln] + [str(result.returncode)]


def test_systemd_unit_with_vllm_bin_runs_that_executable_as_written(tmp_path):
    tool = shutil.which("systemd-analyze") or pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    fake = _fake_vllm(tmp_path)
    plan = _plan(CASES["qwen3-8b-chat-h100"])
    text = export.systemd(plan, export.ExportOptions(vllm_bin=str(fake), api_key=False))
    assert f"ExecStart={fake} serve Qwen/Qwen3-8B" in text and f"#   {fake} --version" in text
    assert _verify(tool, text, tmp_path) == ["0"]


def test_systemd_unit_whose_vllm_does_not_exist_fails_verify(tmp_path):
    tool = shutil.which("systemd-analyze") or pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    plan = _plan(CASES["qwen3-8b-chat-h100"])
    text = export.systemd(plan, export.ExportOptions(vllm_bin=str(tmp_path / "nowhere" / "vllm"), api_key=False))
    assert "is not executable" in " ".join(_verify(tool, text, tmp_path))


def test_a_relative_vllm_bin_is_a_usage_error(runner):
    result = runner.invoke(app, ["export", "systemd", *CASES["qwen3-8b-chat-h100"], "--vllm-bin", "bin/vllm"])
    assert result.exit_code == 2 and "absolute" in result.stderr and result.stdout == ""


# ---- no API key on every interface: warned about ---------------------------------------------------


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_an_export_without_an_api_key_on_every_interface_warns_on_stderr_and_in_the_file(runner, fmt):
    result = runner.invoke(app, ["export", fmt, *CASES["qwen3-8b-chat-h100"], "--no-api-key"])
    assert result.exit_code == 0 and result.stderr.startswith(
        "Warning: vLLM listens on 0.0.0.0:8000 without an API key"
    )
    assert "# WARNING: vLLM listens on 0.0.0.0:8000 without an API key" in result.stdout


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_an_export_with_an_api_key_has_no_warning(runner, fmt):
    result = runner.invoke(app, ["export", fmt, *CASES["qwen3-8b-chat-h100"]])
    assert "WARNING" not in result.stdout.upper() and result.stderr == ""


# ---- k8s: the planned GPU, a compile cache that survives a restart -------------------------------


def _affinity_values(pod_template: dict) -> list[str]:
    (term,) = pod_template["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    (expr,) = term["matchExpressions"]
    assert (expr["key"], expr["operator"]) == ("nvidia.com/gpu.product", "In")
    return expr["values"]


def test_k8s_pods_are_scheduled_on_the_planned_gpu_product():
    deployment = _docs("qwen3-8b-chat-h100")[0]
    assert _affinity_values(deployment["spec"]["template"]) == ["NVIDIA-H100-80GB-HBM3"]


def test_k8s_every_pod_of_a_multi_node_plan_is_scheduled_on_the_planned_gpu():
    lws = _docs("qwen3-235b-a22b-chat-2x8xh100-hpa")[0]
    assert [_affinity_values(t) for t in _pod_specs(lws)] == [["NVIDIA-H100-80GB-HBM3"]] * 2


def test_k8s_a_gpu_without_a_known_product_label_gets_no_affinity_and_a_comment():
    plan = _plan(CASES["qwen3-8b-chat-h100"])
    plan = dataclasses.replace(plan, gpus=tuple(_unlabelled(g) for g in plan.gpus))
    text = export.kubernetes(plan)
    assert "affinity" not in next(yaml.safe_load_all(text))["spec"]["template"]["spec"]
    assert "# No node affinity: qwdeploy knows no nvidia.com/gpu.product label for H100-SXM-80GB" in text


def _unlabelled(gpu):
    return dataclasses.replace(gpu, spec=dataclasses.replace(gpu.spec, product_labels=()))


@pytest.mark.parametrize("recording", ["h100_idle", "h200x2_idle"])
def test_the_product_label_of_a_recorded_gpu_is_its_nvml_name_with_hyphens(recording):
    nv = fake_pynvml.load(recording)
    reading = nvml.inventory(nv, process_name=nv.process_name).gpus[0]
    label = reading.name.replace(" ", "-")
    assert label in specs.spec(reading.name).product_labels
    assert local.from_reading(reading).spec.product_labels == (label,)


def test_k8s_compile_cache_is_on_a_pvc_by_default():
    pod = _docs("qwen3-8b-chat-h100")[0]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["vllm-cache"] == {
        "name": "vllm-cache",
        "persistentVolumeClaim": {"claimName": "qwen3-8b-compile-cache"},
    }


def test_k8s_compile_cache_pvc_name_is_an_option(runner):
    text = _export(runner, "k8s", [*CASES["qwen3-8b-chat-h100"], "--compile-cache-pvc", "warm-cache"])
    pod = next(yaml.safe_load_all(text))["spec"]["template"]["spec"]
    assert {"name": "vllm-cache", "persistentVolumeClaim": {"claimName": "warm-cache"}} in pod["volumes"]
