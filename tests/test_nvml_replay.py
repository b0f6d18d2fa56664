"""NVML answers recorded on a real H100 (tests/data/nvml, capture_nvml.py) replayed by the fake.

Every expected number comes from the same recording: nvidia-smi's own texts and the separate
torch.cuda.mem_get_info() reading taken in the same session.
"""

import csv
import io
import re

import fake_pynvml
import pytest

from qwdeploy.gpus import local as hardware
from qwdeploy.gpus import nvml

MiB = 1 << 20
# Two lent H100s (different UUIDs, same driver): the first capture, and one taken after
# capture_nvml.py learned to store the running-process records as NVML returns them.
MACHINES = [("h100_idle", "h100_30pct_held"), ("h100b_idle", "h100b_30pct_held")]


@pytest.fixture(params=MACHINES, ids=lambda m: m[0].split("_")[0])
def machine(request):
    return request.param


def _inventory(name: str):
    nv = fake_pynvml.load(name)
    return nv, nvml.inventory(nv, process_name=nv.process_name)


def _smi(nv) -> dict:
    """`nvidia-smi --query-gpu=... --format=csv` of the same session, first GPU."""
    text = nv.recording["nvidia_smi_query_csv"].split("\n[stderr]")[0]
    row = next(csv.DictReader(io.StringIO(text), skipinitialspace=True))
    return {k.split(" [")[0]: v.split(" MiB")[0] for k, v in row.items()}


def test_identity_matches_nvidia_smi(machine):
    nv, inv = _inventory(machine[0])
    gpu, smi = inv.gpus[0], _smi(nv)
    assert (gpu.name, gpu.uuid, gpu.pci_bus_id) == (smi["name"], smi["uuid"], smi["pci.bus_id"])
    assert f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}" == smi["compute_cap"]
    assert inv.driver_version == smi["driver_version"]


def test_memory_matches_nvidia_smi_to_the_mib(machine):
    nv, inv = _inventory(machine[0])
    gpu, smi = inv.gpus[0], _smi(nv)
    assert gpu.memory_total_bytes // MiB == int(smi["memory.total"])
    assert abs(gpu.memory_reserved_bytes // MiB - int(smi["memory.reserved"])) <= 1
    assert abs(gpu.memory_used_bytes // MiB - int(smi["memory.used"])) <= 1


def test_cuda_version_is_the_one_nvidia_smi_prints(machine):
    nv, inv = _inventory(machine[0])
    text = (fake_pynvml.DATA / nv.recording["nvidia_smi_q_file"]).read_text()
    assert re.search(r"CUDA Version\s+: (\S+)", text).group(1) == inv.cuda_driver_version_text


def test_one_gpu_has_an_empty_link_matrix(machine):
    _, inv = _inventory(machine[0])
    assert len(inv.gpus) == 1 and inv.links == ()


def test_idle_gpu_has_no_other_processes(machine):
    _, inv = _inventory(machine[0])
    assert inv.gpus[0].processes == () and hardware.other_processes_bytes(inv.gpus[0]) == 0


def test_the_holding_process_is_listed_with_its_name_and_bytes(machine):
    nv, inv = _inventory(machine[1])
    holder = nv.recording["holder"]
    (proc,) = [p for p in inv.gpus[0].processes if p.pid == holder["holder_pid"]]
    assert proc.name == nv.process_name(proc.pid)
    assert proc.used_bytes >= holder["bytes_held_by_torch_empty"]


def test_other_processes_bytes_cover_what_the_holder_allocated(machine):
    nv, inv = _inventory(machine[1])
    held = nv.recording["holder"]["bytes_held_by_torch_empty"]
    assert hardware.other_processes_bytes(inv.gpus[0]) >= held


@pytest.mark.parametrize("name", [name for pair in MACHINES for name in pair])
def test_no_call_outside_the_recording(name):
    nv, _ = _inventory(name)
    assert nv.calls[0] == "nvmlInit" and nv.calls[-1] == "nvmlShutdown"
