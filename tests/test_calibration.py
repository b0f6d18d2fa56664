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
from qwdeploy.planning import catalog, memory
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


H100 = "H100-SXM-80GB"


def correct(recs, gpu=H100, version="0.26.0", model="Qwen/Qwen3-8B"):
    variants = {v.name: v for v in (catalog.get(m) for m in {r["model"] for r in recs})}
    return correction(recs, gpu, version, variants, (9, 0), model)


def run01_engine(**changes):
    return Engine(max_model_len=32768, max_num_batched_tokens=16384, max_num_seqs=1024, **changes)


def test_correction_offsets_the_activation_peak_by_the_measured_gap_per_token():
    rec = h100_record()
    variant = catalog.get("Qwen/Qwen3-8B")
    default = memory.activation_bytes(variant, run01_engine())
    cal, _ = correct([rec])
    off = cal.offsets_for("Qwen/Qwen3-8B", 1)
    assert off.activation_per_token_compiling == pytest.approx((rec["actual"]["activation_bytes"] - default) / 16384)
    assert memory.activation_bytes(variant, run01_engine(), cal) == pytest.approx(
        rec["actual"]["activation_bytes"], abs=2
    )


def test_a_cold_compile_record_moves_the_peak_even_where_the_compile_term_is_the_peak():
    # Qwen3-32B at TP 2 peaks in torch.compile; the old per-token constant of the forward term
    # never reached it
    variant = catalog.get("Qwen/Qwen3-32B")
    engine = Engine(tensor_parallel_size=2, max_num_batched_tokens=8192, max_num_seqs=256)
    rec = h200_tp2_records()[0]
    cal, _ = correct([rec], gpu="H200-141GB", model=rec["model"])
    assert memory.activation_bytes(variant, engine, cal) == pytest.approx(rec["actual"]["activation_bytes"], abs=2)


def test_non_torch_memory_moves_both_ways_without_a_floor_at_the_default():
    rec = h100_record(actual={**h100_record()["actual"], "non_torch_bytes": int(0.05 * GiB)})
    cal, note = correct([rec])
    variant = catalog.get("Qwen/Qwen3-8B")
    assert memory.non_torch_bytes(variant, run01_engine(), cal) == int(0.05 * GiB)
    assert "-0.17 GiB" in note


def test_correction_scales_cuda_graphs_by_the_measured_ratio():
    rec = h100_record()
    variant = catalog.get("Qwen/Qwen3-8B")
    default = memory.cudagraph_bytes(variant, run01_engine())
    cal, _ = correct([rec])
    assert memory.cudagraph_bytes(variant, run01_engine(), cal=cal) == pytest.approx(
        rec["actual"]["cudagraph_bytes"], rel=1e-6
    )
    assert cal.offsets_for("Qwen/Qwen3-8B", 1).cudagraph_ratio == pytest.approx(
        rec["actual"]["cudagraph_bytes"] / default
    )


@pytest.mark.parametrize("gpu, version", [("A100-SXM-80GB", "0.26.0"), ("H100-SXM-80GB", "0.27.1")])
def test_records_of_another_gpu_or_vllm_version_correct_nothing(gpu, version):
    assert correct([h100_record()], gpu, version) is None


def test_gpu_names_match_whatever_spelling_nvml_uses():
    rec = h100_record(gpu="NVIDIA H100-SXM-80GB")
    assert correct([rec], "H100-SXM-80GB", "0.26.1") is not None


def test_records_of_the_same_model_win_over_other_models():
    mine = h100_record(actual={**h100_record()["actual"], "non_torch_bytes": int(0.30 * GiB)})
    other = h100_record(model="Qwen/Qwen3-32B", actual={**h100_record()["actual"], "non_torch_bytes": int(0.90 * GiB)})
    cal, note = correct([mine, other])
    default = constants.CALIBRATION.non_torch_bytes
    assert cal.offsets_for("Qwen/Qwen3-8B", 1).non_torch_bytes == int(0.30 * GiB) - default
    assert cal.offsets_for("Qwen/Qwen3-32B", 1).non_torch_bytes == int(0.90 * GiB) - default
    assert cal.offsets_for("Qwen/Qwen3-4B", 1).non_torch_bytes == int(0.60 * GiB) - default  # both: median
    assert "this model" in note


def test_a_record_corrects_its_own_tensor_parallel_size_first():
    tp1 = h100_record(actual={**h100_record()["actual"], "non_torch_bytes": int(0.30 * GiB)})
    tp2 = h100_record(
        settings={**tp1["settings"], "tensor_parallel_size": 2},
        actual={**tp1["actual"], "non_torch_bytes": int(0.10 * GiB)},
    )
    cal, _ = correct([tp1, tp2])
    assert (
        cal.offsets_for("Qwen/Qwen3-8B", 1).non_torch_bytes == int(0.30 * GiB) - constants.CALIBRATION.non_torch_bytes
    )
    distributed = constants.CALIBRATION.non_torch_distributed_bytes
    assert cal.offsets_for("Qwen/Qwen3-8B", 2).non_torch_bytes == int(0.10 * GiB) - distributed


def test_weights_are_corrected_only_for_the_recorded_model():
    rec = h100_record(
        actual={**h100_record()["actual"], "weights_bytes": h100_record()["actual"]["weights_bytes"] + GiB}
    )
    cal, _ = correct([rec])
    assert cal.offsets_for("Qwen/Qwen3-8B", 1).weights_bytes > 0.99 * GiB
    assert cal.offsets_for("Qwen/Qwen3-4B", 1).weights_bytes == 0


def test_cpu_records_are_kept_but_correct_nothing():
    cpu = {**h100_record(), "gpu": "CPU", "device": "cpu", "actual": {"kv_cache_tokens": 1048576}}
    assert correct([cpu], "CPU", "0.32.0") is None


def test_records_of_a_model_that_cannot_be_read_correct_nothing():
    gone = h100_record(model="/no/such/model-directory")
    assert correction([gone], H100, "0.26.0", {}, (9, 0), "Qwen/Qwen3-8B") is None


def test_load_skips_damaged_lines_and_other_schemas(cache_dir):
    records.append(h100_record())
    with open(records.path(), "a") as f:
        f.write("{not json\n" + json.dumps({"schema": 99}) + "\n")
    records.append(h100_record(model="Qwen/Qwen3-4B"))
    assert [r["model"] for r in records.load()] == ["Qwen/Qwen3-8B", "Qwen/Qwen3-4B"]


def test_no_calibration_file_means_no_records(cache_dir):
    assert records.load() == [] and records.for_plan(H100, catalog.get("Qwen/Qwen3-8B")) is None


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


def test_the_recorded_run_replanned_gets_vllms_kv_cache(cache_dir):
    records.append(h100_record())
    replanned = h100_run01_plan()
    assert replanned.capacity.tokens == pytest.approx(394576, rel=0.002)


def test_correction_changes_only_the_offsets():
    cal, _ = correct([h100_record()])
    assert replace(cal, offsets=(), recorded_starts=0) == constants.CALIBRATION


def test_correction_counts_the_recorded_starts_behind_it():
    cal, _ = correct([h100_record(), h100_record()])
    assert cal.recorded_starts == 2


# ---- the loop at tensor parallel 2: qwdeploy serve on 2 × H200 (tests/data/serve_h200x2) --------

SERVE_H200 = ROOT / "data" / "serve_h200x2" / "logs"


def h200_tp2_plan(warm=False):
    pins = Pins(2, 32768, 0.9, "auto", 256, 8192, False, compile_cache_warm=warm)
    return make_plan(PlanRequest("Qwen/Qwen3-32B", gpu="H200", num_gpus=2, pins=pins))


def h200_tp2_reports():
    """vLLM's logs of the cold start and the warm restart, in that order."""
    return [vllm_log.parse(f.read_text().splitlines()) for f in sorted(SERVE_H200.glob("serve-*.log"))]


def h200_tp2_records():
    out = []
    for warm, report in zip((False, True), h200_tp2_reports(), strict=True):
        plan = h200_tp2_plan(warm)
        start = records.Start(
            gpu="H200-141GB",
            device="cuda",
            vllm_version="0.26.0",
            predicted={},
            seconds_to_ready=None,
            compile_cache_warm=warm,
        )
        out.append(records.make_record(plan, report, start))
    return out


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_after_a_tp2_serve_the_next_plan_gets_its_kv_cache_within_0_2_percent(cache_dir, warm):
    cold, restart = h200_tp2_reports()
    records.append(h200_tp2_records()[0])  # the first serve: a cold start
    if warm:
        records.append(h200_tp2_records()[1])
    measured = (restart if warm else cold).kv_cache_tokens
    assert h200_tp2_plan(warm).capacity.tokens == pytest.approx(measured, rel=0.002)


def test_the_tp2_records_leave_tp1_plans_on_the_default_model_for_this_tp(cache_dir):
    for rec in h200_tp2_records():
        records.append(rec)
    tp1 = make_plan(PlanRequest("Qwen/Qwen3-32B", gpu="H200", num_gpus=1, pins=Pins(tensor_parallel_size=1)))
    default = constants.CALIBRATION.non_torch_bytes
    # a TP 2 offset is the best guess for TP 1 when nothing else is recorded: small and bounded
    assert abs(tp1.memory.non_torch_bytes - default) < 0.01 * GiB


def test_the_records_of_the_first_tp2_serve_predicted_the_confirming_serve(cache_dir, tmp_path):
    # the device run: plan from the two recorded serves, then one more serve on a fresh machine
    model = tmp_path / "Qwen--Qwen3-32B"
    model.mkdir()
    (model / "config.json").write_text((ROOT.parent / "qwdeploy/data/configs/Qwen--Qwen3-32B.json").read_text())
    recorded = (ROOT / "data/serve_h200x2/calibration.jsonl").read_text()
    cache_dir.mkdir(parents=True)
    (cache_dir / "calibration.jsonl").write_text(recorded.replace("/root/models/Qwen--Qwen3-32B", str(model)))
    pins = Pins(tensor_parallel_size=2)
    replanned = make_plan(PlanRequest(str(model), gpu="H200", num_gpus=2, pins=pins))
    confirm = SERVE_H200.parent / "confirm" / "logs"
    (log,) = confirm.glob("serve-*.log")
    measured = vllm_log.parse(log.read_text().splitlines()).kv_cache_tokens
    assert replanned.capacity.tokens == pytest.approx(measured, rel=0.002)
