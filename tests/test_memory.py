"""Exact arithmetic of the memory model, checked by hand."""

import pytest

from qwdeploy.planning import catalog, kv, memory, weights
from qwdeploy.planning.engine import Engine
from qwdeploy.planning.layout import Linear

GiB = 1 << 30


def test_parameter_counts_match_the_shapes():
    assert weights.parameter_count(catalog.get("Qwen/Qwen3-8B")) == 8_190_735_360
    assert weights.parameter_count(catalog.get("Qwen/Qwen3-0.6B")) == 596_049_920
    assert weights.parameter_count(catalog.get("Qwen/Qwen3-30B-A3B")) == 30_532_122_624
    assert weights.parameter_count(catalog.get("Qwen/Qwen3-235B-A22B")) == 235_093_634_560


def test_bf16_tensors_are_two_bytes_a_parameter_plus_the_rotary_cache():
    v = catalog.get("Qwen/Qwen3-8B")
    rotary = 40960 * 128 * 2
    built, rebuilt = weights.tensors(v, Engine())
    assert sum(built) + rebuilt == 8_190_735_360 * 2 + rotary


def test_bf16_weights_add_what_the_allocator_rounds_and_nothing_else():
    # Qwen3-8B at TP 1: embed_tokens and lm_head are 1,187 MiB each, in 1,188 MiB segments
    v = catalog.get("Qwen/Qwen3-8B")
    assert weights.weight_bytes(v, Engine()) - sum(weights.tensors(v, Engine())[0]) == 2 * 1_048_576


def test_kv_bytes_per_token_dense_8b_is_144_kib():
    # 2 (K,V) × 36 layers × 8 heads × 128 × 2 bytes
    assert kv.kv_bytes_per_token(catalog.get("Qwen/Qwen3-8B").spec, "auto", 1) == 147_456


def test_kv_heads_are_replicated_once_tp_exceeds_them():
    moe = catalog.get("Qwen/Qwen3-30B-A3B").spec  # 4 KV heads
    assert kv.kv_bytes_per_token(moe, "auto", 4) == kv.kv_bytes_per_token(moe, "auto", 8) == 24_576


def test_fp8_kv_halves_bytes_per_token():
    spec = catalog.get("Qwen/Qwen3-32B").spec
    assert kv.kv_bytes_per_token(spec, "fp8", 2) == 131_072 // 2


def test_kv_tokens_are_whole_blocks_of_16():
    spec = catalog.get("Qwen/Qwen3-8B").spec
    cap = kv.kv_capacity(10 * 147_456 * 16 + 5, spec, "auto", 1, 32768)
    assert (cap.num_blocks, cap.tokens) == (10, 160)


def test_concurrency_is_blocks_over_blocks_per_request():
    spec = catalog.get("Qwen/Qwen3-8B").spec
    cap = kv.kv_capacity(4096 * 147_456 * 16, spec, "auto", 1, 32768)
    assert cap.max_concurrency == 4096 / 2048


def test_fp8_block_weights_carry_float32_scales():
    # q,k,v fused 6144×4096 fp8 + ceil(6144/128)·ceil(4096/128) fp32 scales
    v = catalog.get("Qwen/Qwen3-8B-FP8")
    assert weights.linear_bytes(Linear("qkv", 6144, 4096), v.spec, 1, (9, 0)) == 6144 * 4096 + 48 * 32 * 4


def test_awq_int4_linear_through_marlin_is_0_5195_bytes_per_weight():
    v = catalog.get("Qwen/Qwen3-14B-AWQ")
    down = Linear("down", 5120, 17408)
    assert weights.linear_bytes(down, v.spec, 1, (8, 9)) == pytest.approx(5120 * 17408 * 0.51953125)


@pytest.mark.parametrize(
    "repo,tp,problem",
    [
        ("Qwen/Qwen3-14B", 5, "KV heads"),
        ("Qwen/Qwen3-8B", 3, "attention heads"),
        ("Qwen/Qwen3-30B-A3B-FP8", 4, "block"),
        ("Qwen/Qwen3-4B-AWQ", 8, "Marlin"),
    ],
)
def test_tp_sizes_vllm_refuses_are_explained(repo, tp, problem):
    assert problem in weights.tp_problem(catalog.get(repo), tp)


def test_capture_sizes_follow_vllms_default_list():
    assert memory.cudagraph_capture_sizes(1024, 16384)[-3:] == [480, 496, 512]
    assert len(memory.cudagraph_capture_sizes(1024, 16384)) == 51
    assert memory.cudagraph_capture_sizes(64, 16384)[-1] == 128


def test_requested_memory_rounds_up_like_vllm():
    assert memory.requested_bytes(85_017_493_504, 0.9) == 76_515_744_154


def test_awq_on_hopper_goes_through_machete_with_fp16_zero_points():
    v = catalog.get("Qwen/Qwen3-14B-AWQ")
    down = Linear("down", 5120, 17408)
    marlin = weights.linear_bytes(down, v.spec, 1, (8, 9))
    machete = weights.linear_bytes(down, v.spec, 1, (9, 0))
    assert machete - marlin == 17408 // 128 * 5120 * (2 - 0.5)
    assert weights.uses_machete(v, (9, 0)) and not weights.uses_machete(v, (8, 9))


def test_moe_runs_on_the_v1_runner_that_takes_its_graph_estimate_from_the_kv_budget():
    moe = catalog.get("Qwen/Qwen3-30B-A3B")
    mns256 = Engine(max_num_seqs=256, max_num_batched_tokens=8192)
    mns512 = Engine(max_num_seqs=512, max_num_batched_tokens=16384)
    # 48 layers × 51 capture sizes: the 526,385,152 B vLLM 0.26 logged for 30B-A3B
    assert abs(memory.cudagraph_estimate_bytes(moe, mns256) - 526_385_152) < 64
    # 512 sequences: FULL decode graphs up to 512 too (m_q30ba3b_throughput logged 689,963,008 B)
    assert abs(memory.cudagraph_estimate_bytes(moe, mns512) - 689_963_008) < 64
    assert (
        memory.cudagraph_estimate_bytes(
            catalog.get("Qwen/Qwen3-8B"), Engine(max_num_seqs=256, max_num_batched_tokens=8192)
        )
        == 0
    )


def test_a_warm_compile_cache_lowers_the_activation_peak():
    v = catalog.get("Qwen/Qwen3-8B")
    cold = memory.activation_bytes(v, Engine(max_num_batched_tokens=8192, max_num_seqs=256))
    warm = memory.activation_bytes(v, Engine(max_num_batched_tokens=8192, max_num_seqs=256, compile_cache_warm=True))
    assert warm < cold
