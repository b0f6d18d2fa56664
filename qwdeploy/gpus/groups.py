"""A tensor-parallel group among local GPUs: one kind, best linked, most free memory. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from math import comb

from qwdeploy.gpus.specs import Gpu

LINK_RANK = {"NVLINK": 0, "BOARD": 1, "PIX": 2, "PXB": 3, "PHB": 4, "NODE": 5, "SYS": 6}

FREE_TOLERANCE = 0.10  # a group may give up this share of free memory for better links
MAX_GROUPS = 5000  # beyond this many combinations, take the GPUs with the most free memory
UNKNOWN_LINK = len(LINK_RANK)


def link_kind(a: Gpu, b: Gpu) -> str | None:
    """How GPU a reaches GPU b (NVLINK, PIX, ... SYS), or None where nothing was probed."""
    return dict(a.links).get(b.uuid) if b.uuid else None


def best_group(gpus: Sequence[Gpu], count: int) -> tuple[Gpu, ...]:
    """`count` GPUs for one tensor-parallel group, in CUDA order.

    One kind of GPU where some kind has enough of them (else mixed, and the plan sizes against
    the smallest). Among groups whose least free memory is within FREE_TOLERANCE of the best
    possible, the one whose slowest pairwise link is fastest (NVLink over PCIe over the CPU
    interconnect: all-reduce runs at the slowest link), then the most free memory, then the
    lowest CUDA indices.
    """
    gpus = sorted(gpus, key=_cuda_index)
    if count >= len(gpus):
        return tuple(gpus)
    kinds: dict[str, list[Gpu]] = {}
    for g in gpus:
        kinds.setdefault(g.spec.name, []).append(g)
    pools = [pool for pool in kinds.values() if len(pool) >= count] or [gpus]
    groups: list[tuple[Gpu, ...]] = []
    for pool in pools:
        if comb(len(pool), count) > MAX_GROUPS:
            by_free = sorted(pool, key=lambda g: (-g.free_bytes, _cuda_index(g)))
            groups.append(tuple(by_free[:count]))
        else:
            groups += combinations(pool, count)
    most = max(min(g.free_bytes for g in group) for group in groups)
    eligible = [grp for grp in groups if min(g.free_bytes for g in grp) >= most * (1 - FREE_TOLERANCE)]
    best = min(
        eligible,
        key=lambda grp: (
            _link_ranks(grp),
            -min(g.free_bytes for g in grp),
            -sum(g.free_bytes for g in grp),
            sorted(_cuda_index(g) for g in grp),
        ),
    )
    return tuple(sorted(best, key=_cuda_index))


def _link_ranks(group: Sequence[Gpu]) -> tuple[int, int]:
    ranks = [LINK_RANK.get(link_kind(a, b) or "", UNKNOWN_LINK) for i, a in enumerate(group) for b in group[i + 1 :]]
    return (max(ranks), sum(ranks)) if ranks else (0, 0)


def _cuda_index(g: Gpu) -> int:
    return g.index if g.index is not None else 0
