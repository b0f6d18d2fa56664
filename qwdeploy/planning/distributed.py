"""What vLLM 0.26's distributed set-up holds on each GPU before its start snapshot. Pure.

`Worker.init_device` creates the communicators (`init_worker_distributed_environment`) and only
then takes `init_snapshot`: everything below is already gone from the free memory vLLM checks
`gpu_memory_utilization × total` against, it is never part of the KV budget, and it stays on the
GPU while vLLM serves. Per group of more than one rank (`tp`; `pp` across nodes; for Qwen3-MoE
also `ep`, which vLLM creates for every MoE model):

  * a PyNccl communicator, warmed up with one all-reduce (NCCL's channel buffers);
  * the tensor-parallel group adds vLLM's custom all-reduce (three 8 MiB buffers) at world
    sizes 2, 4, 6 and 8, and torch symmetric memory (`SYMM_MEM_ALL_REDUCE_MAX_SIZES`), which
    vLLM allocates even where NVLink multicast is off and the communicator is then disabled.

Measured on 2 × H200 (NV18, NCCL 2.28.9, multicast off; bench/results/h200x2): 1,088,421,888 B
per rank for a dense model at TP 2, 1,598,029,824 B for Qwen3-MoE (the `ep` group's second
communicator). TP 4 and 8 reuse the TP 2 figures with an allowance on NCCL's part (not measured).
"""

from __future__ import annotations

from qwdeploy.planning.calibration import CALIBRATION, Calibration
from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.engine import Engine
from qwdeploy.units import MiB

CUSTOM_ALLREDUCE_WORLD_SIZES = (2, 4, 6, 8)  # custom_all_reduce.py _SUPPORTED_WORLD_SIZES
# all_reduce_utils.py SYMM_MEM_ALL_REDUCE_MAX_SIZES: buffer bytes by compute capability and TP
SYMM_MEM_BUFFER_BYTES: dict[tuple[int, int], dict[int, int]] = {
    (9, 0): {2: 64 * MiB, 4: 32 * MiB, 6: 64 * MiB, 8: 64 * MiB},
    (10, 0): {2: 8 * MiB, 4: 32 * MiB, 6: 128 * MiB, 8: 128 * MiB},
    (10, 3): {2: 4 * MiB, 4: 32 * MiB, 6: 32 * MiB, 8: 64 * MiB},
}
MEASURED_TP = 2  # the largest tensor-parallel size measured


def distributed(engine: Engine) -> bool:
    """Whether vLLM sets up any communicator: more than one GPU per replica."""
    return engine.tensor_parallel_size > 1 or engine.pipeline_parallel_size > 1


def communicator_groups(variant: Variant, engine: Engine) -> int:
    """Groups of more than one rank, each with its own NCCL communicator."""
    tp, pp = engine.tensor_parallel_size, engine.pipeline_parallel_size
    return (tp > 1) + (pp > 1) + (variant.spec.is_moe and tp > 1)


def custom_allreduce_bytes(tp: int, cal: Calibration = CALIBRATION) -> int:
    return cal.custom_allreduce_bytes if tp in CUSTOM_ALLREDUCE_WORLD_SIZES else 0


def symm_mem_bytes(tp: int, compute_capability: tuple[int, int]) -> int:
    return SYMM_MEM_BUFFER_BYTES.get(compute_capability, {}).get(tp, 0)


def nccl_bytes(variant: Variant, engine: Engine, cal: Calibration = CALIBRATION) -> int:
    """NCCL's share: first use plus one communicator per group; beyond TP 2 with an allowance."""
    groups = communicator_groups(variant, engine)
    if not groups:
        return 0
    allowance = cal.nccl_unmeasured_allowance if engine.tensor_parallel_size > MEASURED_TP else 1.0
    return int((cal.nccl_first_use_bytes + groups * cal.nccl_communicator_bytes) * allowance)


def init_bytes(variant: Variant, engine: Engine, cal: Calibration = CALIBRATION) -> int:
    """Memory one rank holds after the distributed set-up, before vLLM's start snapshot."""
    if not distributed(engine):
        return 0
    tp = engine.tensor_parallel_size
    return (
        nccl_bytes(variant, engine, cal)
        + custom_allreduce_bytes(tp, cal)
        + symm_mem_bytes(tp, engine.compute_capability)
        + cal.distributed_torch_reserved_bytes
    )
