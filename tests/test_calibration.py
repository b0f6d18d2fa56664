"""Plan-vs-actual records from real vLLM logs, and the correction `plan` applies from them."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from qwdeploy import PlanRequest
from qwdeploy import plan as make_plan
from qwdeploy.cli import app
from qwdeploy.paths import cache_root
from qwdeploy.planning import calibration as constants
from qwdeploy.planning import memory
from qwdeploy.planning.correction import correction
from qwdeploy.planning.engine import Engine
from qwdeploy.planning.plan import Pins
from qwdeploy.vllm import log as vllm_log
from qwdeploy.vllm import records

ROOT = Path(__file__).parent
GPU_LOG = ROOT / "data" / "vllm_logs" / "01_q8b_bf16_default.log"
GiB = 1 << 30


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("QWDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def h100_run01_plan():
    """The settings of groundtruth run 01 (Qwen3-8B, 32768 tokens, gmu 0.9, LLM defaults)."""
    pins = Pins(1, 32768, 0.9, "auto", 1024, 16384, False)
    return make_plan(PlanRequest("Qwen/Qwen3-8B", gpu="H100", num_gpus=1, pins=pins))


def h100_record(plan=None, **changes):
    plan = plan or h100_run01_plan()
    report = vllm_log.parse(GPU_LOG.read_text().splitlines())
    start = records.Start(gpu=plan.gpu.name, device="cuda", vllm_version="0.26.0", predicted={}, seconds_to_ready=94.65)
    rec = records.make_record(plan, report, start)
    return {**rec, **changes}


def test_cache_dir_honours_qwdeploy_cache_dir_then_xdg():
    assert cache_root({"QWDEPLOY_CACHE_DIR": "/q"}) == Path("/q")
    assert cache_root({"XDG_CACHE_HOME": "/x"}) == Path("/x/qwdeploy")


def test_record_holds_what_vllm_logged():
    a = h100_record()["actual"]
    assert (a["activation_bytes"], a["non_torch_bytes"], a["cudagraph_bytes"]) == (
        round(1.58 * GiB),
        round(0.22 * GiB),
        round(1.01 * GiB),
    )
    assert (a["kv_cache_tokens"], a["max_concurrency"], a["seconds_to_ready"]) == (394576, 12.04, 94.65)


def test_record_holds_gpu_version_model_and_settings():
    rec = h100_record()
    assert (rec["gpu"], rec["vllm_version"], rec["model"]) == ("H100-SXM-80GB", "0.26.0", "Qwen/Qwen3-8B")
    assert rec["settings"]["max_num_batched_tokens"] == 16384
    assert rec["settings"]["gpu_memory_utilization"] == 0.9


def test_record_baseline_is_the_default_memory_model():
    plan = h100_run01_plan()
    assert h100_record(plan)["baseline"]["activation_bytes"] == memory.activation_bytes(
        plan.variant, Engine(max_num_batched_tokens=16384, max_num_seqs=1024)
    )


def test_correction_moves_the_activation_constant_by_the_measured_gap_per_token():
    rec = h100_record()
    gap = rec["actual"]["activation_bytes"] - rec["baseline"]["activation_bytes"]
    cal, _ = correction([rec], "H100-SXM-80GB", "0.26.0")
    assert cal.act_c == pytest.approx(constants.CALIBRATION.act_c + gap / 16384)


def test_correction_moves_non_torch_memory_by_the_measured_gap():
    rec = h100_record(actual={**h100_record()["actual"], "non_torch_bytes": int(0.50 * GiB)})
    cal, note = correction([rec], "H100-SXM-80GB", "0.26.0")
    assert cal.non_torch_bytes == int(0.50 * GiB) and "+0.28 GiB" in note


def test_correction_scales_cuda_graphs_by_the_measured_ratio():
    rec = h100_record()
    ratio = rec["actual"]["cudagraph_bytes"] / rec["baseline"]["cudagraph_bytes"]
    cal, _ = correction([rec], "H100-SXM-80GB", "0.26.0")
    assert cal.graph_per_size_per_layer == pytest.approx(constants.CALIBRATION.graph_per_size_per_layer * ratio)


@pytest.mark.parametrize("gpu, version", [("A100-SXM-80GB", "0.26.0"), ("H100-SXM-80GB", "0.27.1")])
def test_records_of_another_gpu_or_vllm_version_correct_nothing(gpu, version):
    assert correction([h100_record()], gpu, version) is None


def test_gpu_names_match_whatever_spelling_nvml_uses():
    rec = h100_record(gpu="NVIDIA H100-SXM-80GB")
    assert correction([rec], "H100-SXM-80GB", "0.26.1") is not None


def test_records_of_the_same_model_win_over_other_models():
    mine = h100_record(actual={**h100_record()["actual"], "non_torch_bytes": int(0.30 * GiB)})
    other = h100_record(model="Qwen/Qwen3-32B", actual={**h100_record()["actual"], "non_torch_bytes": int(0.90 * GiB)})
    cal, note = correction([mine, other], "H100-SXM-80GB", "0.26.0", "Qwen/Qwen3-8B")
    assert cal.non_torch_bytes == int(0.30 * GiB) and "this model" in note


def test_cpu_records_are_kept_but_correct_nothing():
    cpu = {**h100_record(), "gpu": "CPU", "device": "cpu", "actual": {"kv_cache_tokens": 1048576}}
    assert correction([cpu], "CPU", "0.32.0") is None


def test_load_skips_damaged_lines_and_other_schemas(cache_dir):
    records.append(h100_record())
    with open(records.path(), "a") as f:
        f.write("{not json\n" + json.dumps({"schema": 99}) + "\n")
    records.append(h100_record(model="Qwen/Qwen3-4B"))
    assert [r["model"] for r in records.load()] == ["Qwen/Qwen3-8B", "Qwen/Qwen3-4B"]


def test_no_calibration_file_means_no_records(cache_dir):
    assert records.load() == [] and records.for_plan("H100-SXM-80GB") is None


# ---- `plan` applies it ---------------------------------------------------------------------


def plan_json(runner, *extra):
    result = runner.invoke(app, ["plan", "Qwen/Qwen3-8B", "--gpu", "H100", "--json", *extra])
    return json.loads(result.stdout)


def test_plan_says_when_a_serve_record_corrected_it(runner):
    records.append(h100_record())
    notes = plan_json(runner)["notes"]
    assert any(n.startswith("Overheads calibrated from 1 `qwdeploy serve` record") for n in notes)


def test_plan_without_matching_records_says_nothing_about_calibration(runner):
    records.append(h100_record(gpu="A100-SXM-80GB"))
    assert not any("calibrated" in n for n in plan_json(runner)["notes"])


def test_a_record_with_more_non_torch_memory_shrinks_the_planned_kv_cache(runner):
    before = plan_json(runner)["memory_per_gpu"]
    rec = h100_record()
    records.append(replace_actual(rec, non_torch_bytes=rec["baseline"]["non_torch_bytes"] + GiB))
    after = plan_json(runner)["memory_per_gpu"]
    assert after["non_torch_bytes"] == before["non_torch_bytes"] + GiB
    assert after["kv_cache_bytes"] < before["kv_cache_bytes"]


def replace_actual(rec, **actual):
    return {**rec, "actual": {**rec["actual"], **actual}}


def test_the_recorded_run_replanned_predicts_vllms_activation_closer():
    rec = h100_record()
    cal, _ = correction([rec], "H100-SXM-80GB", "0.26.0")
    plan = h100_run01_plan()
    default = memory.activation_bytes(plan.variant, Engine(max_num_batched_tokens=16384, max_num_seqs=1024))
    corrected = memory.activation_bytes(plan.variant, Engine(max_num_batched_tokens=16384, max_num_seqs=1024), cal)
    actual = rec["actual"]["activation_bytes"]
    assert abs(corrected - actual) <= abs(default - actual)
    assert abs(corrected - actual) < 0.01 * GiB  # vLLM rounds to 0.01 GiB


def test_correction_changes_only_the_overhead_terms():
    cal, _ = correction([h100_record()], "H100-SXM-80GB", "0.26.0")
    d = constants.CALIBRATION
    same = replace(
        cal,
        act_c=d.act_c,
        non_torch_bytes=d.non_torch_bytes,
        graph_per_size_per_layer=d.graph_per_size_per_layer,
        graph_per_seq_per_layer=d.graph_per_seq_per_layer,
    )
    assert same == d
