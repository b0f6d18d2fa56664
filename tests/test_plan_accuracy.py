"""The plan against what real vLLM 0.26.0 reported on an H100 (every recorded run)."""

import json

import pytest
from vllm_runs import GiB, load_runs, plan_args

from qwdeploy.cli import app

RUNS = load_runs()
STARTED = [r for r in RUNS if not r.get("refused")]
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


@pytest.mark.parametrize("run", STARTED, ids=lambda r: r["run"])
def test_runs_vllm_started_are_planned_as_fitting(runner, run):
    assert _plan(runner, run)["fits"] is True


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
