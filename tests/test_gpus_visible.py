"""CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER applied to readings, as CUDA applies them.

Two-GPU cases use the recorded H100 twice; only its identity (uuid, PCI bus id, name) differs
between the copies, never a memory figure.
"""

from dataclasses import replace

import fake_pynvml
import pytest

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.gpus import local as hardware
from qwdeploy.gpus import nvml


def _recorded() -> nvml.Inventory:
    nv = fake_pynvml.load("h100_idle")
    return nvml.inventory(nv, process_name=nv.process_name)


def _two(second_name: str | None = None) -> nvml.Inventory:
    """NVML index 0 sits on the higher PCI bus id than NVML index 1."""
    inv = _recorded()
    a = replace(inv.gpus[0], uuid="GPU-aaaa0000", pci_bus_id="00000000:41:00.0")
    b = replace(
        inv.gpus[0], index=1, uuid="GPU-aaaa1111", pci_bus_id="00000000:06:00.0", name=second_name or inv.gpus[0].name
    )
    return replace(inv, gpus=(a, b))


def _order(inv, **env) -> list[str]:
    return [v.reading.uuid for v in hardware.local_view(inv, env).visible]


def test_identical_gpus_are_numbered_by_pci_bus_id():
    assert _order(_two()) == ["GPU-aaaa1111", "GPU-aaaa0000"]


def test_an_index_in_cuda_visible_devices_counts_in_cuda_order():
    assert _order(_two(), CUDA_VISIBLE_DEVICES="1") == ["GPU-aaaa0000"]


def test_cuda_visible_devices_order_is_the_enumeration_order():
    order = _order(_two(), CUDA_VISIBLE_DEVICES="GPU-aaaa0,GPU-aaaa1")
    assert order == ["GPU-aaaa0000", "GPU-aaaa1111"]


def test_an_ambiguous_uuid_prefix_is_exit_13():
    with pytest.raises(QwdeployError) as e:
        hardware.local_view(_two(), {"CUDA_VISIBLE_DEVICES": "GPU-aaaa"})
    assert e.value.exit_code == ExitCode.BAD_VISIBLE_DEVICES and "matches 2 GPUs" in e.value.message


def test_different_kinds_without_pci_bus_id_order_get_a_note():
    view = hardware.local_view(_two("NVIDIA H100 PCIe"), {})
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in view.notes[0]


def test_pci_bus_id_order_is_certain_for_different_kinds():
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    view = hardware.local_view(_two("NVIDIA H100 PCIe"), env)
    assert view.notes == () and _order(_two("NVIDIA H100 PCIe"), **env)[0] == "GPU-aaaa1111"


def test_hidden_gpus_stay_listed_without_a_cuda_index():
    rows = hardware.local_view(_two(), {"CUDA_VISIBLE_DEVICES": "1"}).to_json()["gpus"]
    assert [(r["nvml_index"], r["index"]) for r in rows] == [(0, 0), (1, None)]


def test_planned_gpus_carry_cuda_indices_and_uuids():
    gpus = hardware.local_view(_two(), {"CUDA_VISIBLE_DEVICES": "1,0"}).gpus()
    assert [(g.index, g.uuid) for g in gpus] == [(0, "GPU-aaaa0000"), (1, "GPU-aaaa1111")]
