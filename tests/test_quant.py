"""Quantized formats as vLLM 0.26 runs them: the config read, the kernel per GPU, the bytes of one
linear layer, checked by hand. Shapes are Qwen3-8B's (hidden 4096, intermediate 12288): qkv
N 6144 K 4096, gate_up N 24576 K 4096, down N 4096 K 12288, groups of 128."""

from dataclasses import replace

import pytest

from qwdeploy.errors import QwdeployError, UnknownModelError
from qwdeploy.gpus.specs import named
from qwdeploy.planning import catalog, planner, profiles, quant
from qwdeploy.planning.layout import Linear
from qwdeploy.planning.weights import linear_bytes

GPTQ4 = quant.parse({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}, "t")
GPTQ8 = replace(GPTQ4, bits=8)
AWQ = quant.parse({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}, "t")
FP8_BLOCK = quant.parse({"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}, "t")


def compressed_tensors(weights: dict, activations: dict | None = None):
    group = {"weights": weights, **({"input_activations": activations} if activations else {})}
    return quant.parse({"quant_method": "compressed-tensors", "config_groups": {"group_0": group}}, "t")


CT_FP8_DYNAMIC = compressed_tensors(
    {"num_bits": 8, "type": "float", "strategy": "channel"},
    {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True},
)
CT_W4A16 = compressed_tensors({"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128})
CT_W8A8 = compressed_tensors(
    {"num_bits": 8, "type": "int", "strategy": "channel"},
    {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True},
)
BNB_NF4 = quant.parse({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, "t")
HOPPER, ADA, AMPERE = (9, 0), (8, 9), (8, 0)


def down_bytes(q, cc):
    n, k = 4096, 12288
    return quant.linear_bytes(q, quant.kernel(q, cc, n, k, k), n, k, k)


def test_gptq_int4_through_marlin_keeps_no_zero_points():
    # packed 4096·12288/2 + fp16 scales 96 groups × 4096 × 2; qzeros and g_idx are emptied
    assert down_bytes(GPTQ4, ADA) == 4096 * 12288 // 2 + 96 * 4096 * 2 == 25_952_256


def test_gptq_int4_through_machete_keeps_int32_qzeros_and_g_idx():
    # + qzeros int32 [96, 4096/8] (96·4096/2 bytes) + g_idx int32 [12288]
    assert down_bytes(GPTQ4, HOPPER) == 4096 * 12288 // 2 + 96 * 4096 * 2 + 96 * 4096 // 2 + 4 * 12288


def test_gptq_int8_on_hopper_goes_through_machete_too():
    assert quant.kernel(GPTQ8, HOPPER, 4096, 12288, 12288) == "machete"


def test_gptq_int8_through_machete_keeps_its_qzeros_and_g_idx():
    # 1 B a weight + scales + qzeros int32 [96, 4096/4] (96·4096 bytes) + g_idx
    assert down_bytes(GPTQ8, HOPPER) == 4096 * 12288 + 96 * 4096 * 2 + 96 * 4096 + 4 * 12288 == 51_560_448


def test_awq_through_marlin_packs_its_zero_points():
    # zero points 4 bits a group element: 96 × 4096 / 2
    assert down_bytes(AWQ, ADA) == 4096 * 12288 // 2 + 96 * 4096 * 2 + 96 * 4096 // 2 == 26_148_864


def test_awq_through_machete_holds_16_bit_zero_points():
    assert down_bytes(AWQ, HOPPER) == 4096 * 12288 // 2 + 96 * 4096 * 2 + 96 * 4096 * 2 == 26_738_688


def test_fp8_block_on_ampere_runs_as_fp8_marlin_with_16_bit_group_scales():
    # qkv: 1 B a weight + scales [4096/128, 6144] in 16 bits (the 128x128 blocks as groups)
    assert quant.linear_bytes(FP8_BLOCK, "fp8-marlin", 6144, 4096, 4096) == 6144 * 4096 + 32 * 6144 * 2
    assert quant.kernel(FP8_BLOCK, AMPERE, 6144, 4096, 4096) == "fp8-marlin"


def test_fp8_block_on_ada_keeps_fp32_block_scales():
    assert quant.kernel(FP8_BLOCK, ADA, 6144, 4096, 4096) == "fp8"
    assert quant.linear_bytes(FP8_BLOCK, "fp8", 6144, 4096, 4096) == 6144 * 4096 + 48 * 32 * 4


def test_compressed_tensors_fp8_dynamic_keeps_a_fp32_scale_per_channel():
    assert quant.linear_bytes(CT_FP8_DYNAMIC, "fp8", 6144, 4096, 4096) == 6144 * 4096 + 4 * 6144


def test_compressed_tensors_fp8_below_ada_is_weight_only_marlin_with_16_bit_channel_scales():
    assert quant.kernel(CT_FP8_DYNAMIC, AMPERE, 6144, 4096, 4096) == "fp8-marlin"
    assert quant.linear_bytes(CT_FP8_DYNAMIC, "fp8-marlin", 6144, 4096, 4096) == 6144 * 4096 + 2 * 6144


def test_compressed_tensors_w4a16_keeps_its_weight_shape_tensor():
    # symmetric: no zero points; weight_shape int64[2] stays (16 B)
    assert down_bytes(CT_W4A16, ADA) == 4096 * 12288 // 2 + 96 * 4096 * 2 + 16


def test_compressed_tensors_w8a8_int8_is_one_byte_a_weight_and_fp32_channel_scales():
    assert quant.linear_bytes(CT_W8A8, quant.kernel(CT_W8A8, AMPERE, 6144, 4096, 4096), 6144, 4096, 4096) == (
        6144 * 4096 + 4 * 6144
    )


def test_bitsandbytes_nf4_holds_fp32_absmax_per_64_weights():
    # gate_up: 4 bits a weight + one fp32 absmax a block of 64 (double quant undone) + 16-entry code
    n, k = 24576, 4096
    assert quant.linear_bytes(BNB_NF4, "bnb", n, k, k) == n * k // 2 + n * k // 64 * 4 + 64 == 56_623_168


def test_tensor_parallel_shards_the_down_projection_input():
    spec = replace(catalog.get("Qwen/Qwen3-8B").spec, quantization=GPTQ4)
    # TP 2 on an A100: Marlin, K 6144 per rank: packed + 48 groups of scales
    assert linear_bytes(Linear("down", 4096, 12288), spec, 2, AMPERE) == 4096 * 6144 // 2 + 48 * 4096 * 2


def test_asymmetric_gptq_is_refused_naming_what_runs():
    with pytest.raises(UnknownModelError, match="symmetric") as e:
        quant.parse({"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": False}, "acme/x")
    assert "AWQ" in e.value.hint


def test_gguf_is_refused_as_gone_from_vllm_core():
    with pytest.raises(UnknownModelError, match="vllm-gguf-plugin"):
        quant.parse({"quant_method": "gguf"}, "acme/x")


def test_an_unknown_quant_method_lists_the_formats_vllm_runs():
    with pytest.raises(UnknownModelError) as e:
        quant.parse({"quant_method": "exl2"}, "acme/x")
    assert "AWQ" in e.value.hint and "bitsandbytes" in e.value.hint


def test_autoawq_quant_config_json_without_quant_method_is_awq_needing_the_flag():
    q = quant.parse({"zero_point": True, "q_group_size": 128, "w_bit": 4, "version": "GEMM"}, "t", "quant_config.json")
    assert (q.method, q.vllm_flag) == ("awq", "awq")


def test_old_autogptq_quantize_config_json_is_gptq_needing_the_flag():
    q = quant.parse({"bits": 8, "group_size": 128, "desc_act": False, "sym": True}, "t", "quantize_config.json")
    assert (q.method, q.bits, q.vllm_flag) == ("gptq", 8, "gptq")


def test_awq_needs_turing_or_newer():
    assert "7.5" in quant.gpu_problem(AWQ, (7, 0))
    assert quant.gpu_problem(AWQ, (7, 5)) is None


def test_a_format_the_gpu_cannot_run_is_an_error_naming_what_runs_there(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"architectures": ["Qwen3ForCausalLM"], "hidden_size": 4096, "intermediate_size": 12288, '
        '"num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, '
        '"vocab_size": 151936, "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}'
    )
    a10 = named("A10", 1)[0]
    volta = replace(a10, spec=replace(a10.spec, name="Volta-like", compute_capability=(7, 0)))
    problem = planner.Problem((catalog.get(str(tmp_path)),), profiles.load("chat"), (volta,))
    with pytest.raises(QwdeployError, match="compute capability 7.5") as e:
        planner.plan(problem)
    assert "bf16/fp16" in e.value.hint and "bitsandbytes" in e.value.hint
