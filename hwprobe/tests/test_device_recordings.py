"""NvidiaCollector over NVML recorded by bench/gpu_check.py on a real H100 and a real H200, idle and
under a PyTorch bf16 matmul load (fixtures/PROVENANCE.md: h100_device/, h200_device/)."""

from __future__ import annotations

import json
from pathlib import Path

from hwprobe.collectors.nvidia import NvidiaCollector
from hwprobe.testing import nvml_replay

FIXTURES = Path(__file__).parent / "fixtures"
HERE = FIXTURES / "h100_device"


def recorded(phase: str, device: str = "h100_device") -> NvidiaCollector:
    nvml = nvml_replay.from_recording(json.loads((FIXTURES / device / f"nvml_{phase}.json").read_text()))
    return NvidiaCollector(nvml=nvml, pid_info=lambda pid: (None, None))


def test_it_reads_a_real_h100_under_load_as_nvidia_smi_showed_it():
    nv = recorded("load")
    [device] = nv.inventory()["accelerators"]
    assert device["name"] == "NVIDIA H100 80GB HBM3" and device["power_limit_watts"] == 700.0
    assert device["mem_total_bytes"] == 85520809984 and device["driver"] == "580.159.04"
    [gpu] = nv.collect()["gpus"]
    assert gpu["util_percent"] == 100 and gpu["mem_util_percent"] == 33
    assert gpu["power_watts"] == 697.401 and gpu["temp_c"] == 56
    assert gpu["sm_clock_mhz"] == 1410 and gpu["mem_clock_mhz"] == 2619
    # v2 memory info: driver-reserved memory is not "used", as nvidia-smi reports it
    assert gpu["mem_used_bytes"] == 1194131456
    assert gpu["ecc_errors"] == 0
    [proc] = gpu["processes"]
    assert proc["pid"] == 446 and proc["mem_used_bytes"] == 1184890880


def test_it_reads_the_same_h100_idle():
    [gpu] = recorded("idle").collect()["gpus"]
    assert gpu["util_percent"] == 0 and gpu["processes"] == []
    assert 60 < gpu["power_watts"] < 80


def test_the_windows_taken_under_load_show_the_load():
    windows = [json.loads(line) for line in (HERE / "windows_load.jsonl").read_text().splitlines()]
    busy = [w for w in windows if w["gpus"] and w["gpus"][0]["util_percent"]["mean"] > 90]
    assert busy, "the PyTorch load should show as >90 % utilisation"
    assert max(w["gpus"][0]["power_watts"]["max"] for w in busy) > 600


def test_it_reads_a_real_h200_under_load_with_its_gpm_metrics():
    nv = recorded("load", "h200_device")
    [device] = nv.inventory()["accelerators"]
    assert device["name"] == "NVIDIA H200" and device["mem_total_bytes"] == 150754820096
    assert device["gpm_supported"] is True and device["driver"] == "580.159.04"
    nv.collect()  # GPM needs a pair of samples: the second snapshot has the metrics
    [gpu] = nv.collect()["gpus"]
    assert gpu["util_percent"] == 99 and gpu["power_watts"] == 689.996
    assert gpu["mem_used_bytes"] == 1194131456
    assert (gpu["sm_util_percent"], gpu["tensor_util_percent"]) == (95.707, 92.864)
    [proc] = gpu["processes"]
    assert proc["pid"] == 533 and proc["mem_used_bytes"] == 1184890880


def test_the_h200_windows_taken_under_load_carry_tensor_activity():
    lines = (FIXTURES / "h200_device" / "windows_load.jsonl").read_text().splitlines()
    loaded = [json.loads(line)["gpus"][0] for line in lines][1:]  # the first window holds the ramp-up
    assert loaded and all(g["util_percent"]["mean"] > 99 for g in loaded)
    assert all(g["tensor_util_percent"]["mean"] > 90 and g["sm_util_percent"]["mean"] > 95 for g in loaded)
