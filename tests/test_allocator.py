"""torch's CUDA caching allocator as the weights model counts it (qwdeploy.planning.allocator)."""

import pytest

from qwdeploy.planning.allocator import allocated_bytes

MiB = 1 << 20


def test_a_tensor_that_leaves_at_most_1_mib_of_its_segment_counts_the_whole_segment():
    # Qwen3-32B's down_proj shard at TP 2: 5120 × 12800 bf16 = 125 MiB in a 126 MiB segment
    assert allocated_bytes([125 * MiB]) == 126 * MiB


def test_a_tensor_on_a_2_mib_boundary_counts_its_size():
    assert allocated_bytes([250 * MiB]) == 250 * MiB


def test_a_remainder_over_1_mib_is_split_off_and_not_counted():
    assert allocated_bytes([int(10.5 * MiB)]) == int(10.5 * MiB)


def test_small_tensors_count_in_512_byte_steps():
    assert allocated_bytes([1, 513, 10_240]) == 512 + 1024 + 10_240


def test_mid_sized_tensors_share_a_20_mib_segment():
    # 3 MiB and 4 MiB share one segment; neither is rounded past its 512-byte steps
    assert allocated_bytes([3 * MiB, 4 * MiB]) == 7 * MiB


def test_a_later_tensor_takes_the_smallest_free_block_that_holds_it():
    # 11.5 MiB leaves 0.5 MiB of a 12 MiB segment: kept; 13 MiB leaves 1 MiB: kept too
    assert allocated_bytes([int(11.5 * MiB), 13 * MiB]) == 12 * MiB + 14 * MiB


@pytest.mark.parametrize("sizes", [[], [0.5 * MiB] * 3])
def test_nothing_is_lost_or_invented(sizes):
    assert allocated_bytes([int(s) for s in sizes]) == sum(int(s) for s in sizes)
