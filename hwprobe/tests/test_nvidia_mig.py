"""MIG: memory shared by the compute instances of one GPU instance, processes on the compute
instance that runs them, ECC from the parent GPU.

No public capture has a GPU instance with two compute instances, so ``two_compute_instances``
builds one from the real H100 MIG capture the way NVML documents that layout: the compute
instances of a GPU instance are MIG devices of their own (``nvmlDeviceGetComputeInstanceId``
0 and 1) with the same ``nvmlDeviceGetGpuInstanceId``, each reporting the GPU instance's shared
memory, and each process says which compute instance runs it (``nvmlProcessInfo_t``'s
``computeInstanceId``). The split of the three real processes between the two is our choice.
"""

from __future__ import annotations

import copy
from typing import Any

from hwprobe.collectors.nvidia import NvidiaCollector
from hwprobe.testing import nvml_replay
from hwprobe.tests.conftest import capture_q

MiB = 1024 * 1024
# Compute instance of each process of GPU instance 2 (gpu_burn on one, the two memhogs on the other).
SPLIT = {21180: 1, 21181: 1, 21198: 0}


def two_compute_instances() -> dict[str, Any]:
    """The H100 MIG load capture with GPU instance 2 (3g.40gb) split into compute instances 0 and 1."""
    recording = nvml_replay.nvidia_smi_q_to_recording(*capture_q("h100_mig", "load"))
    parent = recording["devices"][0]
    first = parent["mig_devices"][0]
    assert first["nvmlDeviceGetGpuInstanceId"] == 2
    second = copy.deepcopy(first)
    for mig, ci, profile in ((first, 0, "1c.3g.40gb"), (second, 1, "2c.3g.40gb")):
        mig["nvmlDeviceGetComputeInstanceId"] = ci
        mig["nvmlDeviceGetName"] = f"NVIDIA H100 80GB HBM3 MIG {profile}"
        # NVML lists the GPU instance's processes on each of its MIG devices, with their own ids.
        for proc in mig["nvmlDeviceGetComputeRunningProcesses"]:
            proc["computeInstanceId"] = SPLIT[proc["pid"]]
    second["nvmlDeviceGetUUID"] = "MIG-00000009-0000-0000-0000-000000000009"
    for mig in parent["mig_devices"][1:]:
        mig["slot"] += 1
    parent["mig_devices"].insert(1, {**second, "slot": 1})
    return recording


def collector(recording: dict[str, Any]) -> NvidiaCollector:
    return NvidiaCollector(nvml=nvml_replay.from_recording(recording), pid_info=lambda pid: (None, None))


def test_each_compute_instance_lists_only_the_processes_it_runs() -> None:
    gpus = collector(two_compute_instances()).collect()["gpus"]
    assert [p["pid"] for p in gpus[1]["processes"]] == [21198]
    assert [p["pid"] for p in gpus[2]["processes"]] == [21180, 21181]
    # Process memory on the GPU is counted once: 2296 + 1272 + 7484 MiB, not twice that.
    held = sum(p["mem_used_bytes"] for g in gpus for p in g["processes"] or [])
    assert held == (2296 + 1272 + 7484) * MiB


def test_the_inventory_names_the_gpu_and_compute_instance_of_each_mig_device() -> None:
    inventory = collector(two_compute_instances()).inventory()["accelerators"]
    assert [(d["gpu_instance_id"], d["compute_instance_id"]) for d in inventory] == [
        (None, None),
        (2, 0),
        (2, 1),
        (3, 0),
        (9, 0),
        (10, 0),
    ]
    assert [d["mig_profile"] for d in inventory[1:3]] == ["1c.3g.40gb", "2c.3g.40gb"]
    # Both compute instances see the GPU instance's one memory pool.
    assert inventory[1]["mem_total_bytes"] == inventory[2]["mem_total_bytes"] == 40448 * MiB


def test_a_process_without_a_compute_instance_id_stays_on_the_first_device_of_its_gpu_instance() -> None:
    recording = two_compute_instances()
    for mig in recording["devices"][0]["mig_devices"][:2]:
        for proc in mig["nvmlDeviceGetComputeRunningProcesses"]:
            proc["computeInstanceId"] = None
    gpus = collector(recording).collect()["gpus"]
    assert [p["pid"] for p in gpus[1]["processes"]] == [21180, 21181, 21198]
    assert gpus[2]["processes"] == []


def test_mig_devices_report_their_parents_ecc_count_rather_than_none() -> None:
    gpus = collector(nvml_replay.nvidia_smi_q_to_recording(*capture_q("h100_mig", "load"))).collect()["gpus"]
    assert [g["ecc_errors"] for g in gpus] == [0, 0, 0, 0, 0]
    assert [g["ecc_uncorrected_errors"] for g in gpus] == [0, 0, 0, 0, 0]


def test_mig_devices_of_a_capture_without_ecc_stay_none() -> None:
    recording = nvml_replay.nvidia_smi_q_to_recording(*capture_q("h100_mig", "load"))
    recording["devices"][0]["nvmlDeviceGetEccMode"] = [0, 0]
    gpus = collector(recording).collect()["gpus"]
    assert all(g["ecc_errors"] is None for g in gpus)
