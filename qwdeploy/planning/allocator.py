"""What torch's CUDA caching allocator counts for tensors allocated one after another. Pure.

vLLM's "Model loading took X GiB" is torch's allocated-bytes counter before and after building
the model, and that counter counts whole blocks, not the bytes asked for. The rules
(c10/cuda/CUDACachingAllocator.cpp, unchanged from torch 2.1 to 2.13, no PYTORCH_CUDA_ALLOC_CONF):

  * a request is rounded up to 512 B; up to 1 MiB it comes from the small pool and counts as that;
  * a larger request takes the smallest free block that holds it, else a new segment: 20 MiB for
    requests under 10 MiB, otherwise the request rounded up to 2 MiB;
  * the block is split only when more than 1 MiB would be left; otherwise the whole block counts.

So a 125 MiB tensor takes a 126 MiB segment and counts 126 MiB: Qwen3-32B at TP 2 holds
64 down_proj shards of 125 MiB, and vLLM reports 64 MiB more than the parameters (measured
on 2 × H200: 32,840,820,736 B vs 32,773,286,912 B of parameters and buffers).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from qwdeploy.units import MiB

MIN_BLOCK = 512
SMALL_REQUEST = 1 * MiB  # largest request served by the small pool; most a large block keeps unsplit
LARGE_SEGMENT = 20 * MiB  # segment for requests between 1 MiB and MIN_LARGE_ALLOC
MIN_LARGE_ALLOC = 10 * MiB
ROUND_LARGE = 2 * MiB


def _round(size: int) -> int:
    return max(MIN_BLOCK, -(-size // MIN_BLOCK) * MIN_BLOCK)


def _segment(size: int) -> int:
    if size < MIN_LARGE_ALLOC:
        return LARGE_SEGMENT
    return -(-size // ROUND_LARGE) * ROUND_LARGE


def allocated_bytes(sizes: Iterable[int]) -> int:
    """torch's allocated-bytes counter after allocating tensors of these sizes, in order, none freed."""
    free: list[int] = []  # free large-pool blocks, sorted
    total = 0
    for size in sizes:
        need = _round(size)
        if need <= SMALL_REQUEST:
            total += need
            continue
        i = bisect.bisect_left(free, need)
        block = free.pop(i) if i < len(free) else _segment(need)
        if block - need > SMALL_REQUEST:
            bisect.insort(free, block - need)
            total += need
        else:
            total += block
    return total
