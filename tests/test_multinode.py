"""Multi-node plans: TP inside a node, PP across nodes, memory per pipeline stage, Ray steps."""

import json

import pytest

from qwdeploy import PlanRequest, plan
from qwdeploy.cli import app
from qwdeploy.errors import QwdeployError
from qwdeploy.planning import kv, memory, stages, weights
from qwdeploy.planning.engine import Engine
from qwdeploy.planning.plan import Pins
from qwdeploy.vllm import ray

GiB = 1 << 30


def _multi(model, profile, gpu, nodes, per_node, **pins):
    pinned = Pins(tensor_parallel_size=pins.get("tp"), max_model_len=pins.get("mml"), kv_cache_dtype=pins.get("kv"))
    return plan(PlanRequest(model, profile=profile, gpu=gpu, nodes=nodes, gpus_per_node=per_node, pins=pinned))


@pytest.fixture(scope="module")
def moe_2x8_h100():
    return _multi("Qwen/Qwen3-235B-A22B", "chat", "H100", 2, 8)


@pytest.fixture(scope="module")
def dense_2x1_l40s():
    return _multi("Qwen/Qwen3-32B", "long-context", "L40S", 2, 1)


# ---- layers per stage: vLLM's get_pp_indices ------------------------------------------------


@pytest.mark.parametrize(
    "layers, pp, parts",
    [
        (94, 2, [47, 47]),
        (64, 2, [32, 32]),
        (36, 5, [7, 7, 7, 8, 7]),  # remainder 1: the second-to-last stage
        (10, 4, [2, 3, 3, 2]),  # remainder 2: second- and third-to-last
        (7, 2, [4, 3]),  # pp 2: the remainder lands on the first stage
    ],
)
def test_layers_split_like_vllm_get_pp_indices(layers, pp, parts):
    assert stages.partition_layers(layers, pp) == parts


def test_layer_split_agrees_with_the_installed_vllm():
    utils = pytest.importorskip("vllm.distributed.utils", reason="vLLM is not installed")
    for layers, pp in [(94, 2), (64, 2), (36, 5), (10, 4), (48, 3), (28, 8)]:
        ranges = [utils.get_pp_indices(layers, rank, pp) for rank in range(pp)]
        assert [tuple(r) for r in ranges] == stages.layer_ranges(layers, pp)


# ---- Qwen3-235B-A22B on 2 × 8 H100 -------------------------------------------------------


def test_235b_on_two_h100_nodes_uses_tp8_inside_and_pp2_across(moe_2x8_h100):
    p = moe_2x8_h100
    assert (p.tensor_parallel_size, p.pipeline_parallel_size, p.fits) == (8, 2, True)
    assert len(p.gpus) == 16


def test_235b_stage_weights_are_47_layers_plus_both_vocab_matrices(moe_2x8_h100):
    # One layer at TP 8: qkv (8 q heads + 1 kv head each for K and V) × 128 × 4096 × 2 B,
    # o_proj 4096 × 1024 × 2, norms (2×4096 + 2×128) × 2, 128 experts × (w13 2×192×4096 +
    # w2 4096×192) × 2, router 128 × 4096 × 2.
    layer = 1280 * 4096 * 2 + 4096 * 1024 * 2 + 16896 + 128 * 3 * 192 * 4096 * 2 + 128 * 4096 * 2
    assert layer == 623_919_616
    vocab = 151936 // 8 * 4096 * 2  # embed_tokens and lm_head: qwen3_moe builds both on every rank
    rotary = 40960 * 128 * 2
    for stage in moe_2x8_h100.stages:
        assert stage.layers == 47 and stage.embedding and stage.lm_head
        assert stage.memory.weights_bytes == 47 * layer + 2 * vocab + 4096 * 2 + rotary
    assert moe_2x8_h100.stages[0].memory.weights_bytes == 29_645_880_832  # 27.61 GiB


def test_each_stage_budget_adds_up_to_the_requested_memory(moe_2x8_h100, dense_2x1_l40s):
    for p in (moe_2x8_h100, dense_2x1_l40s):
        for s in p.stages:
            m = s.memory
            assert (
                # the V1 runner (Qwen3-MoE) takes its CUDA-graph estimate out of every worker's budget
                m.weights_bytes
                + m.activation_bytes
                + m.non_torch_bytes
                + m.cudagraph_in_budget_bytes
                + m.kv_cache_bytes
                == m.requested_bytes
                == memory.requested_bytes(p.gpu.total_bytes, p.gpu_memory_utilization)
            )


def test_kv_capacity_is_the_smallest_stage_as_vllm_takes_the_min_over_workers(moe_2x8_h100):
    st = moe_2x8_h100.stages
    page = 2 * 16 * 1 * 128 * 2  # 1 KV head per rank at TP 8 (4 heads, replicated), bf16
    blocks = [s.memory.kv_cache_bytes // (page * 47) for s in st]
    assert [s.capacity.num_blocks for s in st] == blocks
    assert moe_2x8_h100.capacity.num_blocks == min(blocks)
    assert moe_2x8_h100.capacity.tokens == min(blocks) * 16  # 32768 is a multiple of 16
    assert moe_2x8_h100.memory == stages.tightest(st).memory


# ---- Qwen3-32B on 2 × 1 L40S ---------------------------------------------------------------


def test_32b_on_two_l40s_nodes_serves_128k_with_fp8_kv(dense_2x1_l40s):
    p = dense_2x1_l40s
    assert (p.tensor_parallel_size, p.pipeline_parallel_size) == (1, 2)
    assert (p.max_model_len, p.kv_cache_dtype, p.fits) == (131072, "fp8", True)


def test_32b_first_stage_holds_the_embedding_and_the_last_the_lm_head(dense_2x1_l40s):
    first, last = dense_2x1_l40s.stages
    assert (first.layers, first.embedding, first.lm_head) == (32, True, False)
    assert (last.layers, last.embedding, last.lm_head) == (32, False, True)
    # Layer at TP 1: qkv (64 + 2×8 heads) × 128 × 5120 × 2, o 5120 × 8192 × 2,
    # norms (2×5120 + 2×128) × 2, MLP 3 × 5120 × 25600 × 2.
    layer = 10240 * 5120 * 2 + 5120 * 8192 * 2 + 20992 + 3 * 5120 * 25600 * 2
    embed, rotary = 151936 * 5120 * 2, 131072 * 128 * 2  # YaRN: rotary cache for 131072
    fp8_kv = 32 * (1 << 20)  # an fp8 KV cache adds ~1 MiB a layer at load (measured, Calibration)
    rounded = 1 << 18  # the embedding's 1,483.75 MiB count a 1,484 MiB segment (planning.allocator)
    assert first.memory.weights_bytes == 32 * layer + embed + rounded + rotary + fp8_kv == 32_829_489_152
    assert last.memory.weights_bytes == 32 * layer + embed + rounded + 5120 * 2 + rotary + fp8_kv


def test_32b_stages_together_hold_the_whole_model_once(dense_2x1_l40s):
    total = weights.weight_bytes(dense_2x1_l40s.variant, Engine(max_position=131072, kv_cache_dtype="fp8"))
    rotary = 131072 * 128 * 2  # each stage builds its own rotary cache
    assert sum(s.memory.weights_bytes for s in dense_2x1_l40s.stages) == total + rotary


def test_32b_fp8_kv_per_token_on_a_stage_is_half_the_model(dense_2x1_l40s):
    tight = stages.tightest(dense_2x1_l40s.stages)
    per_token = kv.kv_bytes_per_token(dense_2x1_l40s.variant.spec, "fp8", 1, tight.layers)
    assert per_token == 2 * 8 * 128 * 1 * 32 == 65536
    assert tight.capacity.num_blocks == tight.memory.kv_cache_bytes // (per_token * 16)


def test_32b_chat_on_two_l40s_fits_below_the_profile_and_exits_4(runner):
    result = runner.invoke(
        app,
        [
            "plan",
            "Qwen/Qwen3-32B",
            "--nodes",
            "2",
            "--gpu",
            "L40S",
            "--num-gpus-per-node",
            "1",
            "--json",
        ],
    )
    plan = json.loads(result.stdout)
    assert result.exit_code == 4 and plan["fits"] is True and plan["meets_profile"] is False
    assert any(a["fits"] for a in plan["alternatives"])


# ---- layouts vLLM refuses ------------------------------------------------------------------


def test_tensor_parallel_larger_than_a_node_is_refused():
    with pytest.raises(QwdeployError, match="does not fit in a node of 8 GPUs"):
        _multi("Qwen/Qwen3-235B-A22B", "chat", "H100", 2, 8, tp=16)


def test_more_nodes_than_layers_is_refused():
    with pytest.raises(QwdeployError, match="at least one layer"):
        _multi("Qwen/Qwen3-0.6B", "chat", "H100", 29, 1)


def test_tp_vllm_refuses_for_the_checkpoint_is_refused():
    with pytest.raises(QwdeployError, match="not divisible by weight quantization block_n"):
        _multi("Qwen/Qwen3-235B-A22B-FP8", "chat", "H100", 2, 8, tp=8)


def test_fp8_235b_takes_the_largest_tp_its_blocks_allow_and_says_so():
    p = _multi("Qwen/Qwen3-235B-A22B-FP8", "chat", "H100", 2, 8)
    assert p.tensor_parallel_size == 4
    assert any("Uses 4 of the 8 GPUs" in n for n in p.notes)


def test_one_node_is_a_single_node_plan():
    p = plan(PlanRequest("Qwen/Qwen3-8B", gpu="H100", nodes=1, gpus_per_node=8))
    assert (p.pipeline_parallel_size, len(p.stages), p.stages[0].layers) == (1, 1, 36)


# ---- the plan as JSON and as Ray steps ---------------------------------------------------------


def test_plan_json_shows_pp_and_one_note_per_stage(runner):
    result = runner.invoke(
        app,
        [
            "plan",
            "Qwen/Qwen3-235B-A22B",
            "--nodes",
            "2",
            "--gpu",
            "H100",
            "--num-gpus-per-node",
            "8",
            "--json",
        ],
    )
    plan = json.loads(result.stdout)
    assert result.exit_code == 0 and plan["pipeline_parallel_size"] == 2
    assert sum(n.startswith("Stage ") for n in plan["notes"]) == 2


def test_serve_args_add_the_ray_executor_exactly_once(moe_2x8_h100):
    args = ray.serve_args(moe_2x8_h100)
    assert args.count("--distributed-executor-backend") == 1
    assert args[args.index("--distributed-executor-backend") + 1] == "ray"


def test_single_node_serve_args_are_the_plan_args():
    p = plan(PlanRequest("Qwen/Qwen3-8B", gpu="H100", num_gpus=1))
    assert ray.serve_args(p) == p.vllm_args


def test_ray_instructions_start_the_head_then_workers_then_vllm(moe_2x8_h100):
    text = ray.ray_instructions(moe_2x8_h100, "10.1.2.3")
    head, worker, serve = (
        text.index("ray start --head --port=6379"),
        text.index("ray start --address=10.1.2.3:6379"),
        text.index("vllm serve Qwen/Qwen3-235B-A22B"),
    )
    assert head < worker < serve
    assert "--distributed-executor-backend ray" in text and "16 GPUs" in text
