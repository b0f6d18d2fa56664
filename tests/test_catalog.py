"""MODEL resolution: repo ids, base id + dtype, local directories, unknown ids."""

import json

import pytest

from qwdeploy.errors import UnknownModelError
from qwdeploy.planning import catalog


@pytest.mark.parametrize(
    "base,dtype,repo",
    [
        ("Qwen/Qwen3-14B", "int4", "Qwen/Qwen3-14B-AWQ"),
        ("Qwen/Qwen3-14B", "fp8", "Qwen/Qwen3-14B-FP8"),
        ("Qwen/Qwen3-30B-A3B", "int4", "Qwen/Qwen3-30B-A3B-GPTQ-Int4"),
        ("Qwen/Qwen3-0.6B", "int8", "Qwen/Qwen3-0.6B-GPTQ-Int8"),
        ("Qwen/Qwen3-8B-AWQ", "int4", "Qwen/Qwen3-8B-AWQ"),
    ],
)
def test_dtype_picks_the_official_variant(base, dtype, repo):
    assert catalog.get(base, dtype).repo_id == repo


def test_fp16_uses_the_base_repo_in_float16():
    v = catalog.get("Qwen/Qwen3-8B", "fp16")
    assert (v.repo_id, v.weight_dtype) == ("Qwen/Qwen3-8B", "fp16")


def test_every_family_member_is_known():
    ids = {v.repo_id for v in catalog.variants()}
    for size in ("0.6B", "1.7B", "4B", "8B", "14B", "32B", "30B-A3B", "235B-A22B"):
        assert f"Qwen/Qwen3-{size}" in ids and f"Qwen/Qwen3-{size}-FP8" in ids
    assert "Qwen/Qwen3-30B-A3B-Instruct-2507" in ids and "Qwen/Qwen3-235B-A22B-Thinking-2507-FP8" in ids


def test_short_names_resolve():
    assert catalog.get("qwen3-8b").repo_id == "Qwen/Qwen3-8B"


def test_unknown_id_lists_the_closest_known_ids():
    with pytest.raises(UnknownModelError) as e:
        catalog.get("Qwen/Qwen3-13B")
    assert "Qwen/Qwen3-14B" in e.value.hint


def test_missing_dtype_variant_says_what_exists():
    with pytest.raises(UnknownModelError) as e:
        catalog.get("Qwen/Qwen3-4B-Instruct-2507", "int4")
    assert "fp8" in e.value.hint


def test_local_directory_with_a_qwen3_config(tmp_path):
    config = catalog.config_json(catalog.get("Qwen/Qwen3-8B"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    v = catalog.get(str(tmp_path))
    assert v.local_path == tmp_path and v.spec.num_hidden_layers == 36


def test_local_directory_of_another_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(UnknownModelError, match="not a Qwen3 architecture"):
        catalog.get(str(tmp_path))
