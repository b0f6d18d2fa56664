"""`plan` without --gpu plans on recorded GPUs: vLLM's start check passes, the TP group is sane."""

import math
from dataclasses import replace

import fake_pynvml
import pytest

from qwdeploy import PlanRequest, plan
from qwdeploy.gpus import local, nvml
from qwdeploy.gpus.specs import Gpu, named
from qwdeploy.planning import candidate, catalog, planner, profiles
from qwdeploy.planning.calibration import CALIBRATION

IDLE, HELD = "h100_idle", "h100_30pct_held"


@pytest.fixture
def on(replay_nvml):
    """Plan as `qwdeploy plan MODEL` would on the machine of a recording."""

    def use(name: str):
        fake = replay_nvml(name)
        return fake, plan(PlanRequest("Qwen/Qwen3-8B"))

    return use


def _nvml_free(fake) -> int:
    v2 = next(
        c["result"] for c in fake.recording["calls"] if c["call"] == "nvmlDeviceGetMemoryInfo" and c.get("kwargs")
    )
    return v2["free"]


def test_30_percent_held_plan_passes_vllms_free_memory_check_with_margin(on):
    fake, plan = on(HELD)
    requested = math.ceil(plan.gpu.total_bytes * plan.gpu_memory_utilization)
    # vLLM: free memory after its CUDA context must be >= ceil(total × gmu); CUDA graphs come on top
    free_after_context = _nvml_free(fake) - CALIBRATION.cuda_context_bytes
    margin = candidate.FREE_MEMORY_MARGIN_BYTES
    assert requested + plan.memory.cudagraph_bytes + margin <= free_after_context


def test_30_percent_held_plan_fits_what_cuda_itself_reported_free(on):
    fake, plan = on(HELD)
    torch = fake.torch_mem_get_info  # another process's view, after its own CUDA context
    requested = math.ceil(plan.gpu.total_bytes * plan.gpu_memory_utilization)
    assert plan.gpu.total_bytes == torch["total_bytes"]
    assert requested + plan.memory.cudagraph_bytes <= torch["free_bytes"]


def test_30_percent_held_plan_says_another_process_holds_memory(on):
    _, plan = on(HELD)
    assert any("other processes hold" in n for n in plan.notes)
    assert plan.gpu_memory_utilization <= 0.7


def test_idle_plan_keeps_the_profile_utilization_and_pins_the_gpu_by_uuid(on):
    fake, plan = on(IDLE)
    uuid = next(c["result"] for c in fake.recording["calls"] if c["call"] == "nvmlDeviceGetUUID")
    assert plan.env["CUDA_VISIBLE_DEVICES"] == uuid and plan.local
    assert plan.gpu_memory_utilization == plan.profile.gpu_memory_utilization
    assert not any("other processes hold" in n for n in plan.notes)


def test_cuda_total_of_the_probed_gpu_is_what_cuda_reported(on):
    fake, plan = on(IDLE)
    assert plan.gpu.total_bytes == fake.torch_mem_get_info["total_bytes"]


# ---- the TP group: kinds, links, free memory -----------------------------------------------------
# Named GPUs are datasheet data; links are words; the free memory below is the recorded one.


def _named(name: str, count: int, links: dict[tuple[int, int], str] | None = None):
    links = links or {}
    gpus = [replace(g, uuid=f"{name}-{g.index}") for g in named(name, count)]
    out = []
    for g in gpus:
        mine = tuple(
            (f"{name}-{b if a == g.index else a}", kind) for (a, b), kind in links.items() if g.index in (a, b)
        )
        out.append(replace(g, links=mine))
    return out


def test_named_gpus_keep_the_lowest_indices():
    assert [g.index for g in planner.choose_gpus(named("H100", 8), 2)] == [0, 1]


def test_nvlinked_pair_beats_a_pcie_pair():
    gpus = _named(
        "L40S", 4, {(0, 1): "SYS", (0, 2): "SYS", (0, 3): "SYS", (1, 2): "PHB", (1, 3): "SYS", (2, 3): "NVLINK"}
    )
    assert [g.index for g in planner.choose_gpus(gpus, 2)] == [2, 3]


def test_one_kind_of_gpu_is_preferred_to_a_mixed_group():
    gpus = named("A100-80GB", 1) + [replace(g, index=g.index + 1) for g in named("H100", 2)]
    assert {g.name for g in planner.choose_gpus(gpus, 2)} == {"H100-SXM-80GB"}


def test_a_mixed_group_is_planned_against_the_smaller_gpu():
    gpus = named("H100", 1) + [replace(g, index=1) for g in named("L40S", 1)]
    p = planner.plan(planner.Problem((catalog.get("Qwen/Qwen3-8B"),), profiles.load("low-latency"), tuple(gpus)))
    assert p.tensor_parallel_size == 2 and p.gpu.name == "L40S-48GB"


def test_the_gpu_with_more_free_memory_wins():
    idle = _probed(IDLE)
    held = replace(_probed(HELD), index=1, uuid="GPU-second")
    assert planner.choose_gpus([held, idle], 1) == (idle,)


def test_links_do_not_buy_a_group_with_much_less_free_memory():
    idle = _probed(IDLE)
    held = replace(_probed(HELD), index=1, uuid="GPU-b")
    third = replace(idle, index=2, uuid="GPU-c")
    held = replace(held, links=((idle.uuid, "NVLINK"), ("GPU-c", "SYS")))
    idle = replace(idle, links=(("GPU-b", "NVLINK"), ("GPU-c", "SYS")))
    third = replace(third, links=((idle.uuid, "SYS"), ("GPU-b", "SYS")))
    assert [g.index for g in planner.choose_gpus([idle, held, third], 2)] == [0, 2]


def _probed(name: str) -> Gpu:
    nv = fake_pynvml.load(name)
    return local.local_view(nvml.inventory(nv, process_name=nv.process_name), {}).gpus()[0]
