"""A checkpoint's parameters from its safetensors headers, against config.json. Pure: the tensors
are those tests/checkpoints.py writes for each format."""

import json
from dataclasses import replace

import pytest
from checkpoints import QUANT_CONFIGS, TINY, TINY_MOE, checkpoint_bytes, linear, tensors

from qwdeploy.errors import UnknownModelError
from qwdeploy.planning import catalog, weights
from qwdeploy.planning.catalog import Origin
from qwdeploy.planning.checkpoint import from_config, remote_variant
from qwdeploy.planning.engine import Engine, Span
from qwdeploy.planning.layout import Tensor
from qwdeploy.planning.weights import rotary_cache_bytes, weight_bytes

FORMATS = ["bf16", "fp8", "awq", "gptq-int4", "gptq-int8", "ct-fp8-dynamic", "ct-w4a16", "bnb-nf4"]
ORIGIN = Origin("hf", "http://127.0.0.1", "0" * 40, ("config.json",))


def config_of(base: dict, fmt: str) -> dict:
    return {**base, **({"quantization_config": QUANT_CONFIGS[fmt]} if fmt in QUANT_CONFIGS else {})}


def from_headers(base: dict, fmt: str, extra: dict | None = None, drop: str | None = None):
    found = [Tensor(n, d, s) for n, (d, s) in tensors(base, fmt).items() if n != drop]
    found += [Tensor(n, d, s) for n, (d, s) in (extra or {}).items()]
    return remote_variant("acme/x", config_of(base, fmt), None, tuple(found), ORIGIN)


def from_config_only(base: dict, fmt: str, tmp_path) -> catalog.Variant:
    (tmp_path / "config.json").write_text(json.dumps(config_of(base, fmt)))
    return catalog.get(str(tmp_path))


@pytest.mark.parametrize("fmt", FORMATS)
def test_headers_give_the_layers_config_json_implies(fmt):
    v = from_headers(TINY, fmt)
    assert v.layout.layers == from_config(v.spec).layers


@pytest.mark.parametrize("fmt", ["bf16", "fp8", "awq", "gptq-int4"])
def test_moe_headers_give_the_experts_config_json_implies(fmt):
    v = from_headers(TINY_MOE, fmt)
    assert v.layout.layers == from_config(v.spec).layers


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cc", [(9, 0), (8, 9), (8, 0)])
def test_weights_from_headers_equal_weights_from_config_json_on_each_gpu(fmt, cc, tmp_path):
    engine = Engine(compute_capability=cc)
    assert weight_bytes(from_headers(TINY, fmt), engine) == weight_bytes(from_config_only(TINY, fmt, tmp_path), engine)


def test_a_bf16_fine_tune_holds_the_sum_of_its_tensors():
    v = from_headers(TINY, "bf16")  # vocab 1024: no padding
    rotary = rotary_cache_bytes(v.spec, 4096)  # cos/sin cache, a buffer beside the parameters
    assert weight_bytes(v, Engine()) - rotary == checkpoint_bytes(TINY, "bf16") == v.layout.checkpoint_bytes


def test_a_vocabulary_off_64_is_padded_in_embedding_and_lm_head():
    odd = {**TINY, "vocab_size": 1000}  # vLLM pads to 1024: 24 rows × 256 × 2 B, twice
    v = from_headers(odd, "bf16")
    rotary = rotary_cache_bytes(v.spec, 4096)
    assert weight_bytes(v, Engine()) - rotary == checkpoint_bytes(odd, "bf16") + 2 * 24 * 256 * 2


def test_tied_embeddings_hold_one_vocabulary_matrix():
    tied, untied = from_headers({**TINY, "tie_word_embeddings": True}, "bf16"), from_headers(TINY, "bf16")
    assert weight_bytes(untied, Engine()) - weight_bytes(tied, Engine()) == 1024 * 256 * 2


def test_config_values_set_the_facts_a_fine_tune_changes():
    v = from_headers({**TINY, "num_hidden_layers": 3, "vocab_size": 2048, "max_position_embeddings": 8192}, "bf16")
    assert (v.spec.num_hidden_layers, v.spec.vocab_size, v.spec.context_length) == (3, 2048, 8192)


def test_yarn_in_config_json_sets_the_context_and_the_rotary_cache():
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}
    v = from_headers({**TINY, "rope_scaling": yarn}, "bf16")
    # vLLM: derived max_model_len = 4096 × 4; the rotary cache covers as many positions
    assert v.spec.context_length == 16384
    assert weight_bytes(v, Engine()) - checkpoint_bytes(TINY, "bf16") == 16384 * 128 * 2


def test_config_and_headers_that_disagree_on_layers_are_refused():
    with pytest.raises(UnknownModelError, match="3 layers"):
        remote_variant(
            "acme/x",
            {**TINY, "num_hidden_layers": 3},
            None,
            tuple(Tensor(n, d, s) for n, (d, s) in tensors(TINY, "bf16").items()),
            ORIGIN,
        )


def test_config_and_headers_that_disagree_on_a_shape_are_refused():
    wide = {**TINY, "intermediate_size": 1024}
    found = tuple(Tensor(n, d, s) for n, (d, s) in tensors(TINY, "bf16").items())
    with pytest.raises(UnknownModelError, match="mlp.gate_proj"):
        remote_variant("acme/x", wide, None, found, ORIGIN)


def test_untied_embeddings_without_an_lm_head_are_refused():
    with pytest.raises(UnknownModelError, match="no lm_head"):
        from_headers(TINY, "bf16", drop="lm_head.weight")


def test_quantized_tensors_without_a_quant_config_are_refused():
    found = tuple(Tensor(n, d, s) for n, (d, s) in tensors(TINY, "awq").items())
    with pytest.raises(UnknownModelError, match="no quantization config"):
        remote_variant("acme/x", TINY, None, found, ORIGIN)


def test_a_quant_config_in_its_own_file_quantizes_the_model():
    found = tuple(Tensor(n, d, s) for n, (d, s) in tensors(TINY, "gptq-int4").items())
    qc = {k: v for k, v in QUANT_CONFIGS["gptq-int4"].items() if k != "quant_method"}
    v = remote_variant("acme/x", {**TINY, "torch_dtype": "float16"}, (qc, "quantize_config.json"), found, ORIGIN)
    assert (v.weights, v.spec.quantization.vllm_flag) == ("gptq-int4", "gptq")


def mixed_gptq():
    """A GPTQ checkpoint whose layer-0 down_proj was left in fp16 (mixed precision)."""
    found = {
        n: (d, s)
        for n, (d, s) in tensors(TINY, "gptq-int4").items()
        if not n.startswith("model.layers.0.mlp.down_proj")
    }
    found["model.layers.0.mlp.down_proj.weight"] = ("F16", (256, 768))
    v = remote_variant(
        "acme/x", config_of(TINY, "gptq-int4"), None, tuple(Tensor(n, d, s) for n, (d, s) in found.items()), ORIGIN
    )
    return v


def test_modules_stored_unquantized_stay_16_bit():
    v = mixed_gptq()
    down = [x for x in v.layout.layers[0].linears if x.role == "down"][0]
    assert not down.quantized and v.layout.layers[1] != v.layout.layers[0]


def test_tensors_vllm_has_no_place_for_are_listed_not_counted():
    v = from_headers(TINY, "bf16", extra={"model.mtp.0.weight": ("BF16", (256, 256))})
    assert v.layout.ignored == ("model.mtp.0.weight",)
    assert weight_bytes(v, Engine()) == weight_bytes(from_headers(TINY, "bf16"), Engine())


def test_a_pipeline_stage_counts_its_own_layers_of_a_mixed_checkpoint():
    v = mixed_gptq()
    stages = (weights.tensors(v, Engine(), replace(Span(layers=1), start_layer=i)) for i in (0, 1))
    first, second = (sum(built) + rebuilt for built, rebuilt in stages)
    # layer 0's down_proj in fp16 (256·768·2) against GPTQ int4 through Machete
    assert first - second == 256 * 768 * 2 - (256 * 768 // 2 + 6 * 256 * 2 + 6 * 256 // 2 + 4 * 768)


@pytest.mark.parametrize("repo_id", ["Qwen/Qwen3-30B-A3B-GPTQ-Int4", "Qwen/Qwen3-30B-A3B-FP8"])
def test_real_sized_moe_headers_plan_what_the_catalog_plans(repo_id):
    shipped = catalog.get(repo_id)
    config = catalog.config_json(shipped)
    fmt = "gptq-int4" if "GPTQ" in repo_id else "fp8"
    found = tuple(Tensor(n, d, s) for n, (d, s) in tensors(config, fmt).items())
    remote = remote_variant("acme/x", config, None, found, ORIGIN)
    engine = Engine(tensor_parallel_size=2, compute_capability=(9, 0))
    assert weight_bytes(remote, engine) == weight_bytes(shipped, engine)


def test_a_quantized_lm_head_is_held_as_its_kernel_holds_it():
    # GPTQModel's lm_head: true: the lm_head tensors are packed like any other linear
    plain = {n: v for n, v in tensors(TINY, "gptq-int4").items() if not n.startswith("lm_head")}
    found = {**plain, **linear("lm_head", 1024, 256, "gptq-int4")}
    v = remote_variant(
        "acme/x", config_of(TINY, "gptq-int4"), None, tuple(Tensor(n, d, s) for n, (d, s) in found.items()), ORIGIN
    )
    assert v.layout.lm_head.quantized
