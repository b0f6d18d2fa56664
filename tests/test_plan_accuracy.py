"""The plan against what real vLLM 0.26.0 reported (every recorded run: H100; 2 × H200 at TP 2)."""

import json

import pytest
from vllm_runs import GiB, load_runs, plan_args

from qwdeploy.cli import app

RUNS = load_runs()
STARTED = [r for r in RUNS if not r.get("refused")]
SERVED = [r for r in STARTED if not r.get("died_at_first_request")]
# started, then ran out of memory at the first request: past what the GPUs keep (2 × H200, 0.981)
DIED = [r for r in STARTED if r.get("died_at_first_request")]
REFUSED = [r for r in RUNS if r.get("refused")]


def _plan(runner, run) -> dict:
    result = runner.invoke(app, plan_args(run))
    assert result.exit_code in (0, 3, 4), result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("run", STARTED, ids=lambda r: r["run"])
def test_kv_cache_tokens_within_3_percent_of_vllm(runner, run):
    plan = _plan(runner, run)
    assert plan["kv_cache_tokens"] == pytest.approx(run["kv_tokens"], rel=0.03)


@pytest.mark.parametrize("run", [r for r in RUNS if r.get("weights_GiB")], ids=lambda r: r["run"])
def test_weights_within_2_percent_of_model_loading_took(runner, run):
    plan = _plan(runner, run)
    assert plan["memory_per_gpu"]["weights_bytes"] / GiB == pytest.approx(run["weights_GiB"], rel=0.02)


@pytest.mark.parametrize(
    "run", [r for r in RUNS if (r.get("exact") or {}).get("weights_bytes")], ids=lambda r: r["run"]
)
def test_weights_at_tensor_parallel_2_within_0_3_percent_of_what_each_rank_loaded(runner, run):
    plan = _plan(runner, run)
    assert plan["memory_per_gpu"]["weights_bytes"] == pytest.approx(run["exact"]["weights_bytes"], rel=0.003)


@pytest.mark.parametrize(
    "run", [r for r in RUNS if r.get("tp", 1) > 1 and not r.get("refused")], ids=lambda r: r["run"]
)
def test_kv_cache_tokens_at_tensor_parallel_2_within_0_5_percent_of_vllm(runner, run):
    plan = _plan(runner, run)
    assert plan["kv_cache_tokens"] == pytest.approx(run["kv_tokens"], rel=0.005)


@pytest.mark.parametrize(
    "run", [r for r in RUNS if (r.get("exact") or {}).get("kv_cache_bytes")], ids=lambda r: r["run"]
)
def test_kv_cache_bytes_at_tensor_parallel_2_miss_by_less_than_32_mib_whatever_the_budget(runner, run):
    # an absolute bound: the old model's ~1 GiB per GPU became several percent at a small budget
    plan = _plan(runner, run)
    assert abs(plan["memory_per_gpu"]["kv_cache_bytes"] - run["exact"]["kv_cache_bytes"]) < 32 * 2**20


@pytest.mark.parametrize("run", SERVED, ids=lambda r: r["run"])
def test_runs_vllm_served_are_planned_as_fitting(runner, run):
    assert _plan(runner, run)["fits"] is True


@pytest.mark.parametrize("run", DIED, ids=lambda r: r["run"])
def test_runs_that_died_at_their_first_request_are_planned_as_not_fitting(runner, run):
    plan = _plan(runner, run)
    assert plan["fits"] is False and plan["gpu_memory_utilization_max"] < run["gpu_memory_utilization"]


@pytest.mark.parametrize("run", REFUSED, ids=lambda r: r["run"])
def test_runs_vllm_refused_are_planned_as_not_fitting(runner, run):
    assert _plan(runner, run)["fits"] is False


@pytest.mark.parametrize("run", [r for r in REFUSED if r.get("estimated_max_model_len")], ids=lambda r: r["run"])
def test_max_model_len_limit_within_2_percent_of_vllms_estimate(runner, run):
    plan = _plan(runner, run)
    assert plan["max_model_len_limit"] == pytest.approx(run["estimated_max_model_len"], rel=0.02)


@pytest.mark.parametrize("run", REFUSED, ids=lambda r: r["run"])
def test_refused_plan_exits_3(runner, run):
    assert runner.invoke(app, plan_args(run)).exit_code == 3
