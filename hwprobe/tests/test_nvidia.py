"""NvidiaCollector over NVML replays of real nvidia-smi -q captures."""

from __future__ import annotations

import json
import logging

import pynvml
import pytest

from hwprobe.collectors import NotApplicable
from hwprobe.collectors.nvidia import NvidiaCollector, mig_profile_from_attributes, mig_profile_from_name
from hwprobe.testing import nvml_replay
from hwprobe.tests.conftest import capture_q, replay

MiB = 1024 * 1024


def hidden_pid(pid: int) -> tuple[None, None]:
    return None, None


def collector(gpu: str, phase: str) -> NvidiaCollector:
    return NvidiaCollector(nvml=replay(gpu, phase), pid_info=hidden_pid)


# (capture, phase): name, mem total MiB, mem used MiB, power W, limit W, temp C, SM MHz, mem MHz,
# util %, mem util % - all read off the capture's nvidia-smi -q text.
EXPECTED = {
    ("h100", "idle"): ("NVIDIA H100 80GB HBM3", 81559, 0, 69.85, 700.0, 41, 345, 2619, 0, 0),
    ("h100", "load"): ("NVIDIA H100 80GB HBM3", 81559, 19818, 629.45, 700.0, 59, 1980, 2619, 100, 11),
    ("h200", "idle"): ("NVIDIA H200", 143771, 0, 77.67, 700.0, 28, 345, 3201, 0, 0),
    ("h200", "load"): ("NVIDIA H200", 143771, 32362, 627.32, 700.0, 52, 1980, 3201, 100, 7),
    ("l40s", "idle"): ("NVIDIA L40S", 46068, 0, 183.28, 350.0, 64, 2520, 9001, 100, 9),
    ("l40s", "load"): ("NVIDIA L40S", 46068, 1235, 110.24, 350.0, 54, 2520, 9001, 9, 2),
    ("rtx4080s", "idle"): ("NVIDIA GeForce RTX 4080 SUPER", 16376, 596, 25.92, 320.0, 43, 210, 405, 0, 23),
    ("rtx4080s", "load"): ("NVIDIA GeForce RTX 4080 SUPER", 16376, 1474, 84.03, 320.0, 45, 2805, 11251, 7, 2),
}


@pytest.mark.parametrize(("gpu", "phase"), sorted(EXPECTED))
def test_it_reports_the_values_the_capture_shows(gpu: str, phase: str) -> None:
    name, total, used, power, limit, temp, sm, mem_clock, util, mem_util = EXPECTED[(gpu, phase)]
    nv = collector(gpu, phase)
    [device] = nv.inventory()["accelerators"]
    assert device["name"] == name
    assert device["vendor"] == "nvidia"
    assert device["mem_total_bytes"] == total * MiB
    assert device["power_limit_watts"] == limit
    assert device["parent_uuid"] is None and device["mig_profile"] is None
    [sample] = nv.collect()["gpus"]
    assert sample["mem_total_bytes"] == total * MiB
    assert sample["mem_used_bytes"] == used * MiB
    assert sample["power_watts"] == power
    assert sample["power_limit_watts"] == limit
    assert sample["temp_c"] == temp
    assert sample["sm_clock_mhz"] == sm
    assert sample["mem_clock_mhz"] == mem_clock
    assert sample["util_percent"] == util
    assert sample["mem_util_percent"] == mem_util


def test_it_reports_the_driver_version_in_the_inventory() -> None:
    [device] = collector("h100", "idle").inventory()["accelerators"]
    assert device["driver"] == "590.48.01"
    assert device["uuid"] == "GPU-00000000-0000-0000-0000-000000000000"


def test_it_reads_the_idle_clock_event_reason_as_a_bitmask() -> None:
    assert collector("h100", "idle").collect()["gpus"][0]["throttle_reasons"] == pynvml.nvmlClocksEventReasonGpuIdle
    assert collector("h100", "load").collect()["gpus"][0]["throttle_reasons"] == 0


def test_it_counts_volatile_ecc_errors_where_ecc_is_on_and_reports_none_where_it_is_not() -> None:
    assert collector("h100", "load").collect()["gpus"][0]["ecc_errors"] == 0
    # The GeForce card shows ECC Mode N/A: no count, not a fake 0.
    assert collector("rtx4080s", "load").collect()["gpus"][0]["ecc_errors"] is None


def test_it_lists_gpu_processes_with_their_memory() -> None:
    [sample] = collector("h100", "load").collect()["gpus"]
    assert [(p["pid"], p["mem_used_bytes"]) for p in sample["processes"]] == [
        (11327, 2566 * MiB),
        (11328, 1542 * MiB),
        (11345, 15690 * MiB),
    ]
    # psutil cannot see these pids here, so the names come from NVML and the user is unknown.
    assert [p["name"] for p in sample["processes"]] == ["memhog", "memhog", "gpu_burn"]
    assert all(p["user"] is None for p in sample["processes"])


def test_it_lists_a_compute_and_graphics_process_once() -> None:
    [sample] = collector("rtx4080s", "load").collect()["gpus"]
    pids = [p["pid"] for p in sample["processes"]]
    assert pids.count(2165) == 1  # kwin_wayland is "C+G"
    assert next(p for p in sample["processes"] if p["pid"] == 2165)["mem_used_bytes"] == 25 * MiB


def test_it_names_processes_through_psutil_when_the_pid_is_visible() -> None:
    nv = NvidiaCollector(nvml=replay("h100", "load"), pid_info=lambda pid: ("python3", "alice"))
    procs = nv.collect()["gpus"][0]["processes"]
    assert {(p["name"], p["user"]) for p in procs} == {("python3", "alice")}


def test_it_reports_mig_devices_as_their_own_devices() -> None:
    nv = collector("h100_mig", "load")
    inventory = nv.inventory()["accelerators"]
    assert [d["index"] for d in inventory] == [0, 1, 2, 3, 4]
    parent, *migs = inventory
    assert parent["parent_uuid"] is None and parent["mig_profile"] is None
    assert [d["mig_profile"] for d in migs] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]
    assert all(d["parent_uuid"] == parent["uuid"] for d in migs)
    assert [d["uuid"] for d in migs] == [f"MIG-0000000{i}-0000-0000-0000-00000000000{i}" for i in range(4)]
    assert [d["mem_total_bytes"] for d in migs] == [40448 * MiB, 20096 * MiB, 9984 * MiB, 9984 * MiB]

    gpus = nv.collect()["gpus"]
    assert [g["index"] for g in gpus] == [0, 1, 2, 3, 4]
    assert gpus[0]["mem_used_bytes"] == 11125 * MiB
    assert gpus[0]["power_watts"] == 432.21
    assert gpus[0]["temp_c"] == 53
    assert [g["mem_used_bytes"] for g in gpus[1:]] == [11091 * MiB, 17 * MiB, 9 * MiB, 9 * MiB]


def test_it_reports_utilisation_of_a_mig_gpu_as_none_without_crashing() -> None:
    gpus = collector("h100_mig", "idle").collect()["gpus"]
    assert all(g["util_percent"] is None and g["mem_util_percent"] is None for g in gpus)
    assert all(g["power_watts"] is None for g in gpus[1:])


def test_it_puts_mig_processes_on_the_instance_that_runs_them() -> None:
    gpus = collector("h100_mig", "load").collect()["gpus"]
    assert [p["pid"] for p in gpus[1]["processes"]] == [21180, 21181, 21198]
    assert all(g["processes"] == [] for g in gpus[2:])
    # NVML lists them on the parent GPU too; they are counted once, on their instance.
    assert {p["pid"] for p in gpus[0]["processes"] or []}.isdisjoint({21180, 21181, 21198})


def test_it_counts_xid_events_since_it_started() -> None:
    source = replay("h100", "idle")
    nv = NvidiaCollector(nvml=source, pid_info=hidden_pid)
    assert nv.collect()["gpus"][0]["xid_errors"] == 0
    source.push_xid(0, xid=79)
    source.push_xid(0, xid=48)
    assert nv.collect()["gpus"][0]["xid_errors"] == 2
    assert nv.collect()["gpus"][0]["xid_errors"] == 2


def test_it_counts_an_xid_of_a_mig_instance_on_that_instance_and_its_parent() -> None:
    source = replay("h100_mig", "idle")
    nv = NvidiaCollector(nvml=source, pid_info=hidden_pid)
    source.push_xid(0, xid=43, gpu_instance_id=3)  # GPU instance 3 is MIG device 1 (2g.20gb)
    assert [g["xid_errors"] for g in nv.collect()["gpus"]] == [1, 0, 1, 0, 0]


def test_it_reports_xid_errors_as_none_where_events_are_unsupported() -> None:
    recording = nvml_replay.nvidia_smi_q_to_recording(*capture_q("h100", "idle"))
    recording["devices"][0]["nvmlDeviceRegisterEvents"] = {"nvml_error": pynvml.NVML_ERROR_NOT_SUPPORTED}
    nv = NvidiaCollector(nvml=nvml_replay.from_recording(recording), pid_info=hidden_pid)
    assert nv.collect()["gpus"][0]["xid_errors"] is None


def test_it_turns_a_failing_field_into_none_and_logs_it_once(caplog: pytest.LogCaptureFixture) -> None:
    recording = nvml_replay.nvidia_smi_q_to_recording(*capture_q("h100", "idle"))
    recording["devices"][0]["nvmlDeviceGetPowerUsage"] = {"nvml_error": pynvml.NVML_ERROR_GPU_IS_LOST}
    nv = NvidiaCollector(nvml=nvml_replay.from_recording(recording), pid_info=hidden_pid)
    with caplog.at_level(logging.INFO, logger="hwprobe"):
        for _ in range(3):
            sample = nv.collect()["gpus"][0]
    assert sample["power_watts"] is None
    assert sample["temp_c"] == 41
    lost = [r for r in caplog.records if "nvmlDeviceGetPowerUsage" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelno == logging.WARNING


def test_it_stays_quiet_about_fields_a_device_does_not_support(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="hwprobe"):
        collector("h100_mig", "load").collect()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_it_is_not_applicable_without_a_driver() -> None:
    # The real pynvml on this machine: no libnvidia-ml, so nvmlInit fails with LibraryNotFound.
    with pytest.raises(NotApplicable, match="no NVIDIA driver"):
        NvidiaCollector(nvml=pynvml)
    with pytest.raises(NotApplicable):
        NvidiaCollector()


def test_a_recording_of_a_replay_round_trips_through_json() -> None:
    source = replay("h100_mig", "load")
    recording = nvml_replay.record(source)
    again = nvml_replay.from_recording(json.loads(json.dumps(recording)))
    first = NvidiaCollector(nvml=replay("h100_mig", "load"), pid_info=hidden_pid)
    second = NvidiaCollector(nvml=again, pid_info=hidden_pid)
    assert second.inventory() == first.inventory()
    assert second.collect() == first.collect()
    assert source.initialised == 0  # record() shuts NVML down again


def test_the_replay_refuses_calls_it_does_not_serve() -> None:
    with pytest.raises(AttributeError):
        replay("h100", "idle").nvmlDeviceGetFanSpeed  # noqa: B018
    assert replay("h100", "idle").NVML_CLOCK_SM == pynvml.NVML_CLOCK_SM


def test_it_derives_mig_profiles_from_names_and_attributes() -> None:
    assert mig_profile_from_name("NVIDIA H100 80GB HBM3 MIG 1g.10gb") == "1g.10gb"
    assert mig_profile_from_name("NVIDIA A100-SXM4-40GB MIG 1c.3g.20gb") == "1c.3g.20gb"
    assert mig_profile_from_name("NVIDIA H100 80GB HBM3") is None

    class Attrs:
        gpuInstanceSliceCount = 3
        computeInstanceSliceCount = 3
        memorySizeMB = 40448

    assert mig_profile_from_attributes(Attrs) == "3g.40gb"


def test_each_gpu_process_carries_its_process_group_so_jobs_can_claim_it() -> None:
    nv = NvidiaCollector(nvml=replay("h100", "load"), pid_info=hidden_pid, pgid_of=lambda pid: 4000 + pid % 7)
    procs = [p for g in nv.collect()["gpus"] for p in g["processes"]]
    assert procs and all(p["pgid"] == 4000 + p["pid"] % 7 for p in procs)
