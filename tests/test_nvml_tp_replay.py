"""Two H200s over NVLink (tests/data/nvml/h200x2_*, recorded on the lent 2 × H200 machine) replayed:
the link matrix, the CUDA total, and the tensor-parallel group `plan` builds from them.

Expected values come from the same session: nvidia-smi's own texts and torch.cuda.mem_get_info().
"""

import csv
import io
import re
from dataclasses import replace

import fake_pynvml
import pytest

from qwdeploy import PlanRequest, plan
from qwdeploy.gpus import groups, local, nvml

IDLE, HELD = "h200x2_idle", "h200x2_30pct_held"


def _inventory(name: str):
    nv = fake_pynvml.load(name)
    return nv, nvml.inventory(nv, process_name=nv.process_name)


@pytest.fixture
def on(replay_nvml):
    """The machine of a recording, as `qwdeploy plan` and `qwdeploy gpus` would see it."""
    return replay_nvml


def _smi_rows(nv) -> list[dict]:
    text = nv.recording["nvidia_smi_query_csv"].split("\n[stderr]")[0]
    return list(csv.DictReader(io.StringIO(text), skipinitialspace=True))


def test_both_gpus_are_listed_as_nvidia_smi_lists_them():
    nv, inv = _inventory(IDLE)
    assert [(g.name, g.uuid) for g in inv.gpus] == [(r["name"], r["uuid"]) for r in _smi_rows(nv)]


def test_the_link_matrix_says_nvlink_where_nvidia_smi_topo_says_nv18():
    nv, inv = _inventory(IDLE)
    topo = (fake_pynvml.DATA / nv.recording["nvidia_smi_topo_file"]).read_text()
    assert re.search(r"GPU0\s+X\s+NV18", topo)
    (link,) = inv.links
    assert (link.a, link.b, link.nvlink, link.p2p_read) == (0, 1, True, True)


def test_each_gpu_sees_the_other_over_nvlink(on):
    on(IDLE)
    gpus = local.local_gpus()
    assert [dict(g.links) for g in gpus] == [{gpus[1].uuid: "NVLINK"}, {gpus[0].uuid: "NVLINK"}]


def test_cuda_total_of_each_gpu_is_what_cuda_reported(on):
    fake = on(IDLE)
    torch = fake.recording["torch_mem_get_info"]["per_device"]
    assert [g.total_bytes for g in local.local_gpus()] == [d["total_bytes"] for d in torch]


def test_the_named_h200_total_is_the_measured_one(on):
    on(IDLE)
    probed = local.local_gpus()[0]
    named = plan(PlanRequest("Qwen/Qwen3-8B", gpu="H200")).gpu
    assert named.total_bytes == probed.total_bytes and named.spec.total_source == "measured"


def test_qwen3_32b_chat_takes_both_gpus_in_cuda_order(on):
    fake = on(IDLE)
    p = plan(PlanRequest("Qwen/Qwen3-32B"))
    uuids = [r["uuid"] for r in _smi_rows(fake)]
    assert p.tensor_parallel_size == 2 and p.env["CUDA_VISIBLE_DEVICES"] == ",".join(uuids)


def test_the_probed_pair_plans_what_the_named_pair_plans(on):
    on(IDLE)
    pins = PlanRequest("Qwen/Qwen3-32B").pins
    probed = plan(PlanRequest("Qwen/Qwen3-32B", pins=replace(pins, tensor_parallel_size=2)))
    named = plan(PlanRequest("Qwen/Qwen3-32B", gpu="H200", num_gpus=2, pins=replace(pins, tensor_parallel_size=2)))
    assert probed.capacity.tokens == named.capacity.tokens


def test_one_gpu_model_goes_to_the_gpu_nobody_holds(on):
    fake = on(HELD)
    holder_gpu = next(r["uuid"] for r in _smi_rows(fake) if r["index"] == "0")
    p = plan(PlanRequest("Qwen/Qwen3-8B"))
    assert p.tensor_parallel_size == 1 and p.env["CUDA_VISIBLE_DEVICES"] != holder_gpu


def test_a_pair_with_a_held_gpu_is_capped_by_that_gpus_free_memory(on):
    on(HELD)
    p = plan(PlanRequest("Qwen/Qwen3-32B"))
    held = min(p.gpus, key=lambda g: g.free_bytes)
    assert p.tensor_parallel_size == 2
    assert p.memory.footprint_bytes <= held.free_bytes


def test_the_nvlinked_pair_beats_a_pcie_pair_with_a_little_more_free_memory(on):
    on(IDLE)
    a, b = local.local_gpus()
    # a third H200 reached over the host bridge (the topology NVML reported between these two),
    # with 2 % more free memory than they have
    c = replace(b, index=2, uuid="GPU-third", free_bytes=int(b.free_bytes * 1.02), links=((a.uuid, "PHB"),))
    a = replace(a, links=(*a.links, ("GPU-third", "PHB")))
    b = replace(b, links=(*b.links, ("GPU-third", "PHB")))
    assert groups.best_group([a, b, c], 2) == (a, b)
