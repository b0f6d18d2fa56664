"""Shipped profiles load; user profiles get errors that name the file and the key."""

import pytest

from qwdeploy.errors import ProfileError
from qwdeploy.planning import profiles

GOOD = """weights: [bf16]
kv_cache_dtype: auto
max_model_len: 16384
min_concurrency: 2
gpu_memory_utilization: 0.85
max_num_seqs: 32
max_num_batched_tokens: 4096
"""


@pytest.mark.parametrize("name", ["chat", "long-context", "throughput", "low-latency", "cost", "agent"])
def test_every_shipped_profile_loads(name):
    assert profiles.load(name).name == name


def test_a_profile_can_be_a_path(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(GOOD)
    assert profiles.load(str(f)).max_model_len == 16384


def test_unknown_key_suggests_the_close_one(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text(GOOD + "max_num_seq: 8\n")
    with pytest.raises(ProfileError) as e:
        profiles.load(str(f))
    assert str(f) in e.value.message and "max_num_seq" in e.value.message
    assert "max_num_seqs" in e.value.hint


def test_bad_value_names_file_key_and_allowed_values(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(GOOD.replace("kv_cache_dtype: auto", "kv_cache_dtype: int3"))
    with pytest.raises(ProfileError) as e:
        profiles.load(str(f))
    assert "kv_cache_dtype" in e.value.message and str(f) in e.value.message
    assert "auto, fp8" in e.value.hint


def test_missing_required_key_is_named(tmp_path):
    f = tmp_path / "short.yaml"
    f.write_text(GOOD.replace("min_concurrency: 2\n", ""))
    with pytest.raises(ProfileError, match="min_concurrency"):
        profiles.load(str(f))


def test_invalid_yaml_gives_the_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("weights: [bf16\nmax_model_len: 3\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        profiles.load(str(f))


def test_unknown_profile_name_suggests_a_shipped_one():
    with pytest.raises(ProfileError) as e:
        profiles.load("chatt")
    assert "'chat'" in e.value.hint


def test_batched_tokens_below_max_num_seqs_is_refused(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text(GOOD.replace("max_num_batched_tokens: 4096", "max_num_batched_tokens: 16"))
    with pytest.raises(ProfileError, match="max_num_batched_tokens"):
        profiles.load(str(f))
