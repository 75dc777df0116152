"""GPM efficiency metrics over NVML replays of an H200 under the loads in fixtures/PROVENANCE.md (gpm/)."""

from __future__ import annotations

import json
from pathlib import Path

import pynvml
import pytest

from hwprobe.aggregate import Window
from hwprobe.collectors.nvidia import NvidiaCollector
from hwprobe.testing import nvml_replay
from hwprobe.tests.conftest import capture_q

GPM = Path(__file__).parent / "fixtures" / "gpm"
EFFICIENCY = (
    "sm_util_percent",
    "sm_occupancy_percent",
    "tensor_util_percent",
    "dram_bw_util_percent",
    "fp16_util_percent",
    "fp32_util_percent",
    "fp64_util_percent",
    "pcie_tx_bytes_per_s",
    "pcie_rx_bytes_per_s",
    "nvlink_tx_bytes_per_s",
    "nvlink_rx_bytes_per_s",
)


def recording(name: str) -> dict:
    return json.loads((GPM / f"{name}.json").read_text())


def collector(name: str) -> NvidiaCollector:
    source = nvml_replay.from_recording(recording(name))
    return NvidiaCollector(nvml=source, pid_info=lambda pid: (None, None), pid_exists=lambda pid: True)


# load: NVML util, SM util, SM occupancy, tensor util, DRAM bandwidth util (%), as recorded on a real
# H200 by bench/gpu_check.py (fixtures/PROVENANCE.md, gpm/)
H200 = {
    "idle": (0, 0.0, 0.0, 0.0, 0.0),
    "matmul_bf16": (100, 95.957, 14.181, 93.108, 17.597),
    "copy_1gib": (99, 98.144, 79.31, 0.0, 87.074),
    "tiny_matmul": (30, 0.493, 0.015, 0.0, 0.0),
}


@pytest.mark.parametrize("load", sorted(H200))
def test_it_reads_what_the_sms_did_beside_nvml_utilisation(load: str) -> None:
    util, sm, occupancy, tensor, dram = H200[load]
    nv = collector(f"h200_{load}")
    first = nv.collect()["gpus"][0]
    # The first snapshot has no earlier GPM sample to compare with: absent, not 0.
    assert first["sm_util_percent"] is None
    gpu = nv.collect()["gpus"][0]
    assert gpu["util_percent"] == util
    assert (gpu["sm_util_percent"], gpu["sm_occupancy_percent"]) == (sm, occupancy)
    assert (gpu["tensor_util_percent"], gpu["dram_bw_util_percent"]) == (tensor, dram)


def test_nvml_utilisation_hides_a_gpu_that_barely_works() -> None:
    nv = collector("h200_tiny_matmul")
    nv.collect()
    gpu = nv.collect()["gpus"][0]
    assert gpu["util_percent"] >= 30 and gpu["sm_util_percent"] < 1


def test_bf16_matmuls_count_as_tensor_work_not_fp16_or_fp32() -> None:
    nv = collector("h200_matmul_bf16")
    nv.collect()
    gpu = nv.collect()["gpus"][0]
    assert gpu["tensor_util_percent"] > 90
    assert gpu["fp16_util_percent"] == 0.0 and gpu["fp32_util_percent"] == 0.0
    assert gpu["pcie_rx_bytes_per_s"] == round(11.753 * 2**20, 3)  # NVML's MiB/s as bytes/s
    assert gpu["nvlink_tx_bytes_per_s"] == 0.0  # one GPU, no NVLink peers: answered, and 0


def test_metrics_the_gpu_did_not_answer_stay_absent() -> None:
    data = recording("h200_matmul_bf16")
    [reading] = data["devices"][0]["gpm_readings"]
    del reading["FP64_UTIL"], reading["PCIE_TX_PER_SEC"]  # the replay answers NOT_SUPPORTED for them
    nv = NvidiaCollector(nvml=nvml_replay.from_recording(data), pid_info=lambda p: (None, None))
    nv.collect()
    gpu = nv.collect()["gpus"][0]
    assert gpu["fp64_util_percent"] is None and gpu["pcie_tx_bytes_per_s"] is None
    assert gpu["fp16_util_percent"] == 0.0


def test_a_gpu_without_gpm_reports_none_and_says_so_in_its_inventory() -> None:
    nv = collector("l40s_no_gpm")
    [device] = nv.inventory()["accelerators"]
    assert device["gpm_supported"] is False
    for _ in range(3):
        gpu = nv.collect()["gpus"][0]
    assert all(gpu[name] is None for name in EFFICIENCY)
    assert gpu["util_percent"] == 9  # NVML's own number is still there


def test_an_nvml_too_old_to_answer_leaves_gpm_support_unknown() -> None:
    nv = NvidiaCollector(
        nvml=nvml_replay.from_nvidia_smi_q(*capture_q("h100", "load")), pid_info=lambda p: (None, None)
    )
    assert nv.inventory()["accelerators"][0]["gpm_supported"] is None


def test_gpm_rates_become_bytes_per_second() -> None:
    data = recording("h200_matmul_bf16")
    data["devices"][0]["gpm_readings"] = [{"SM_UTIL": 50.0, "PCIE_TX_PER_SEC": 100.0, "NVLINK_TOTAL_RX_PER_SEC": 2.5}]
    nv = NvidiaCollector(nvml=nvml_replay.from_recording(data), pid_info=lambda p: (None, None))
    nv.collect()
    gpu = nv.collect()["gpus"][0]
    assert gpu["pcie_tx_bytes_per_s"] == 100 * 2**20
    assert gpu["nvlink_rx_bytes_per_s"] == 2.5 * 2**20


def test_windows_carry_gpm_metrics_as_min_mean_max() -> None:
    data = recording("h200_matmul_bf16")
    data["devices"][0]["gpm_readings"] = [{"SM_UTIL": v} for v in (90.0, 96.0, 99.0)]
    nv = NvidiaCollector(nvml=nvml_replay.from_recording(data), pid_info=lambda p: (None, None))
    window = Window(0.0)
    for _ in range(4):
        window.add(nv.collect())
    gpu = window.close(4.0)["gpus"][0]
    assert gpu["sm_util_percent"] == {"min": 90.0, "mean": 95.0, "max": 99.0}
    assert gpu["tensor_util_percent"] is None


def test_a_failed_gpm_sample_starts_the_pair_again_instead_of_spanning_the_gap() -> None:
    data = recording("h200_copy_1gib")
    source = nvml_replay.from_recording(data)
    nv = NvidiaCollector(nvml=source, pid_info=lambda p: (None, None))
    nv.collect()
    assert nv.collect()["gpus"][0]["dram_bw_util_percent"] == 87.074
    data["devices"][0]["gpm_readings"] = {"nvml_error": pynvml.NVML_ERROR_UNKNOWN}
    assert nv.collect()["gpus"][0]["dram_bw_util_percent"] is None
    data["devices"][0]["gpm_readings"] = [{"DRAM_BW_UTIL": 70.0}]
    assert nv.collect()["gpus"][0]["dram_bw_util_percent"] is None  # one fresh sample: no pair yet
    assert nv.collect()["gpus"][0]["dram_bw_util_percent"] == 70.0


def test_mig_devices_read_gpm_of_their_gpu_instance_through_the_parent() -> None:
    data = nvml_replay.nvidia_smi_q_to_recording(*capture_q("h100_mig", "load"))
    parent = data["devices"][0]
    parent["nvmlGpmQueryDeviceSupport"] = {"isSupportedDevice": 1}
    parent["mig_devices"][0]["gpm_readings"] = [{"SM_UTIL": 97.0, "ANY_TENSOR_UTIL": 0.0}]  # GI 2 runs gpu_burn
    parent["mig_devices"][1]["gpm_readings"] = [{"SM_UTIL": 0.0, "ANY_TENSOR_UTIL": 0.0}]
    nv = NvidiaCollector(nvml=nvml_replay.from_recording(data), pid_info=lambda p: (None, None))
    assert [d["gpm_supported"] for d in nv.inventory()["accelerators"]] == [True] * 5
    nv.collect()
    gpus = nv.collect()["gpus"]
    # The MIG parent's own GPM is not in the capture: absent. Instances without readings: absent.
    assert [g["sm_util_percent"] for g in gpus] == [None, 97.0, 0.0, None, None]


def test_closing_frees_the_gpm_samples() -> None:
    source = nvml_replay.from_recording(recording("h200_idle"))
    nv = NvidiaCollector(nvml=source, pid_info=lambda p: (None, None))
    nv.collect()
    nv.close()
    assert source._gpm_samples == {}


def test_a_recording_of_a_gpm_capable_gpu_replays_the_same_metrics() -> None:
    source = nvml_replay.from_recording(recording("h200_copy_1gib"))
    again = nvml_replay.record(source, gpm_interval_s=0)
    assert again["devices"][0]["nvmlGpmQueryDeviceSupport"] == {"isSupportedDevice": 1}
    assert again["devices"][0]["gpm_readings"] == recording("h200_copy_1gib")["devices"][0]["gpm_readings"]
    nv = NvidiaCollector(nvml=nvml_replay.from_recording(again), pid_info=lambda p: (None, None))
    nv.collect()
    assert nv.collect()["gpus"][0]["dram_bw_util_percent"] == 87.074
