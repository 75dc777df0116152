"""What the health rules read: XID codes, uncorrectable ECC, retired pages and row remapping,
throttling as a share of time, NVML errors per device and whether a GPU process still exists."""

from __future__ import annotations

from typing import Any

import pynvml

from hwprobe.collectors.nvidia import NvidiaCollector
from hwprobe.testing import nvml_replay
from hwprobe.tests.conftest import capture_q


def h100(phase: str = "load") -> dict[str, Any]:
    return nvml_replay.nvidia_smi_q_to_recording(*capture_q("h100", phase))


def collector(recording: dict[str, Any], **kwargs: Any) -> tuple[NvidiaCollector, nvml_replay.NvmlReplay]:
    source = nvml_replay.from_recording(recording)
    kwargs.setdefault("pid_info", lambda pid: (None, None))
    return NvidiaCollector(nvml=source, **kwargs), source


def test_it_keeps_the_code_of_the_latest_xid() -> None:
    nv, source = collector(h100())
    assert nv.collect()["gpus"][0]["xid_last"] == 0  # none since the agent started
    source.push_xid(0, xid=48)
    source.push_xid(0, xid=79)
    gpu = nv.collect()["gpus"][0]
    assert (gpu["xid_errors"], gpu["xid_last"]) == (2, 79)


def test_it_reads_row_remapping_and_retired_pages_as_the_capture_shows_them() -> None:
    gpu = collector(h100())[0].collect()["gpus"][0]
    # The H100 capture: Remapped Rows 0 / 0 / Pending No / Failure No; Retired Pages N/A (Hopper remaps rows).
    assert (gpu["remapped_rows_correctable"], gpu["remapped_rows_uncorrectable"]) == (0, 0)
    assert (gpu["row_remap_pending"], gpu["row_remap_failed"]) == (0, 0)
    assert gpu["retired_pages"] is None and gpu["retired_pages_pending"] is None


def test_a_pending_row_remap_and_uncorrectable_ecc_show_up() -> None:
    recording = h100()
    device = recording["devices"][0]
    device["nvmlDeviceGetRemappedRows"] = [0, 2, 1, 0]
    device["nvmlDeviceGetTotalEccErrors"] = {"corrected_volatile": 3, "uncorrected_volatile": 2}
    gpu = collector(recording)[0].collect()["gpus"][0]
    assert gpu["remapped_rows_uncorrectable"] == 2 and gpu["row_remap_pending"] == 1
    assert (gpu["ecc_errors"], gpu["ecc_uncorrected_errors"]) == (5, 2)


def test_retired_pages_count_both_causes_and_the_pending_flag() -> None:
    recording = h100()
    recording["devices"][0]["nvmlDeviceGetRetiredPages"] = {"single_bit": [0x1000, 0x2000], "double_bit": [0x3000]}
    recording["devices"][0]["nvmlDeviceGetRetiredPagesPendingStatus"] = 1
    gpu = collector(recording)[0].collect()["gpus"][0]
    assert (gpu["retired_pages"], gpu["retired_pages_pending"]) == (3, 1)


def test_throttling_is_the_share_of_time_the_clock_counters_grew() -> None:
    recording = h100()
    # Nanosecond counters one second apart: 0.9 s of HW thermal slowdown, 0.25 s of power brake.
    recording["devices"][0]["nvmlDeviceGetFieldValues"] = [
        {"timestamp_us": 5_000_000, "values": {"269": 0, "270": 10**9, "271": 0, "74": 0}},
        {"timestamp_us": 6_000_000, "values": {"269": 0, "270": 19 * 10**8, "271": 25 * 10**7, "74": 0}},
    ]
    nv = collector(recording)[0]
    first = nv.collect()["gpus"][0]
    assert first["thermal_slowdown_percent"] is None  # one reading: no interval yet
    gpu = nv.collect()["gpus"][0]
    assert (gpu["thermal_slowdown_percent"], gpu["power_brake_percent"], gpu["power_cap_percent"]) == (90.0, 25.0, 0.0)


def test_the_capture_counters_that_did_not_move_read_as_no_throttling() -> None:
    nv = collector(h100())[0]
    nv.collect()
    gpu = nv.collect()["gpus"][0]
    assert (gpu["thermal_slowdown_percent"], gpu["power_brake_percent"]) == (0.0, 0.0)


def test_without_counters_the_active_reason_bits_count_the_whole_second() -> None:
    recording = h100()
    del recording["devices"][0]["nvmlDeviceGetFieldValues"]
    recording["devices"][0]["nvmlDeviceGetCurrentClocksEventReasons"] = (
        pynvml.nvmlClocksEventReasonHwThermalSlowdown | pynvml.nvmlClocksEventReasonSwPowerCap
    )
    gpu = collector(recording)[0].collect()["gpus"][0]
    assert (gpu["thermal_slowdown_percent"], gpu["power_brake_percent"], gpu["power_cap_percent"]) == (
        100.0,
        0.0,
        100.0,
    )


def test_nvml_errors_are_counted_per_device_with_the_latest_code() -> None:
    recording = h100()
    nv, _ = collector(recording)
    assert nv.collect()["gpus"][0]["nvml_errors"] == 0
    recording["devices"][0]["nvmlDeviceGetPowerUsage"] = {"nvml_error": pynvml.NVML_ERROR_GPU_IS_LOST}
    recording["devices"][0]["nvmlDeviceGetTemperature"] = {"gpu": {"nvml_error": pynvml.NVML_ERROR_GPU_IS_LOST}}
    gpu = nv.collect()["gpus"][0]
    assert (gpu["nvml_errors"], gpu["nvml_last_error"]) == (2, pynvml.NVML_ERROR_GPU_IS_LOST)
    assert gpu["power_watts"] is None and gpu["temp_c"] is None


def test_fields_a_gpu_does_not_have_are_not_nvml_errors() -> None:
    nv, _ = collector(nvml_replay.nvidia_smi_q_to_recording(*capture_q("h100_mig", "load")))
    assert all(g["nvml_errors"] == 0 for g in nv.collect()["gpus"])


def test_each_gpu_process_says_whether_the_host_still_has_it() -> None:
    nv, _ = collector(h100(), pid_exists=lambda pid: pid != 11345)
    procs = {p["pid"]: p["exists"] for p in nv.collect()["gpus"][0]["processes"]}
    assert procs == {11327: True, 11328: True, 11345: False}
