"""The default GPU health rules over replayed NVML data: each fires once per incident.

Batches come from hwprobe's own collector over NVML replays of real nvidia-smi captures
(hwprobe/tests/fixtures), with the fault injected where the capture is healthy: an XID event,
an uncorrectable ECC count, a pending row remap, throttle counters, NVML errors."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pynvml
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dashboard.alerts.evaluate import evaluate
from dashboard.alerts.models import Alert, AlertRule, GpuWatch, KnownGpu
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine, MachineState
from dashboard.fleet.payload import Batch
from hwprobe.collectors.nvidia import NvidiaCollector
from hwprobe.testing import batches, nvml_replay
from hwprobe.tests.conftest import capture_q

pytestmark = pytest.mark.django_db

HEALTH = {
    "gpu_xid": True,
    "gpu_ecc_uncorrectable": True,
    "gpu_memory_remap": True,
    "gpu_throttle": True,
    "gpu_missing": True,
    "gpu_nvml_errors": True,
    "ghost_memory": True,
    "job_allocated_idle": False,
}


@pytest.fixture
def t0() -> datetime:
    return timezone.now().replace(microsecond=0) - timedelta(hours=3)


def h100() -> dict[str, Any]:
    return nvml_replay.nvidia_smi_q_to_recording(*capture_q("h100", "load"))


def collector(recording: dict[str, Any]) -> tuple[NvidiaCollector, nvml_replay.NvmlReplay]:
    source = nvml_replay.from_recording(recording)
    return NvidiaCollector(nvml=source, pid_info=lambda pid: (None, None), pid_exists=lambda pid: True), source


def report(machine: Machine, nv: NvidiaCollector, at: datetime, seq: int, windows: int = 1) -> None:
    """The agent sends ``windows`` 10 s windows ending at ``at``."""
    doc = batches.batch(nv, list(range(seq, seq + windows)), end_ts=at.timestamp())
    store_batch(machine, Batch.model_validate(doc), now=at)
    machine.refresh_from_db()


def alerts(kind: str) -> list[Alert]:
    return list(Alert.objects.filter(rule__kind=kind).order_by("pk"))


def only(kind: str) -> None:
    """Leave the default rule of ``kind`` enabled and switch the other defaults off."""
    AlertRule.objects.exclude(kind=kind).update(enabled=False)
    AlertRule.objects.filter(kind=kind).update(enabled=True)


def test_a_fresh_install_lists_the_default_health_rules(client, viewer):
    rules = {r.kind: r for r in AlertRule.objects.all()}
    assert {k: rules[k].enabled for k in HEALTH} == HEALTH
    assert all(rules[k].advice for k in HEALTH)
    client.force_login(viewer)
    page = client.get("/alerts/").content.decode()
    for kind in HEALTH:
        assert rules[kind].name in page
    assert "What to do" in page


def test_a_fresh_install_also_says_when_a_machine_goes_silent_or_its_agent_loses_samples(machine, t0, client, viewer):
    rules = {r.kind: r for r in AlertRule.objects.filter(kind__in=("machine_offline", "spool_dropping"))}
    assert {k: (r.name, r.threshold, r.enabled) for k, r in rules.items()} == {
        "machine_offline": ("Machine offline", 5, True),
        "spool_dropping": ("Agent losing samples", 30, True),
    }
    AlertRule.objects.exclude(pk__in=[r.pk for r in rules.values()]).update(enabled=False)
    report(machine, collector(h100())[0], t0, 1)
    assert evaluate(t0)["fired"] == 0
    MachineState.objects.filter(machine=machine).update(spool_refused=2, last_refusal="400: samples[0].ts: bad")
    assert evaluate(t0 + timedelta(minutes=1))["fired"] == 1
    assert evaluate(t0 + timedelta(minutes=6))["fired"] == 1  # silent since t0
    assert {a.rule.kind for a in Alert.objects.filter(resolved_at=None)} == {"machine_offline", "spool_dropping"}
    client.force_login(viewer)
    page = client.get("/alerts/").content.decode()
    assert "Machine offline" in page and "Agent losing samples" in page


def test_an_xid_fires_once_with_its_meaning_and_resolves_after_quiet_minutes(machine, t0):
    only("gpu_xid")
    nv, source = collector(h100())
    report(machine, nv, t0, 1)
    assert evaluate(t0)["fired"] == 0
    source.push_xid(0, xid=79)
    report(machine, nv, t0 + timedelta(seconds=10), 2)
    assert evaluate(t0 + timedelta(seconds=15))["fired"] == 1
    source.push_xid(0, xid=79)  # the same incident goes on: no second alert
    report(machine, nv, t0 + timedelta(seconds=40), 3)
    assert evaluate(t0 + timedelta(seconds=45))["fired"] == 0
    [alert] = alerts("gpu_xid")
    assert "XID 79 (GPU has fallen off the bus)" in alert.message and "What to do:" in alert.message
    report(machine, nv, t0 + timedelta(minutes=61), 4)
    assert evaluate(t0 + timedelta(minutes=61)) == {"fired": 0, "resolved": 1}


def test_uncorrectable_ecc_fires_once_and_clears_after_a_reset(machine, t0):
    only("gpu_ecc_uncorrectable")
    recording = h100()
    recording["devices"][0]["nvmlDeviceGetTotalEccErrors"] = {"corrected_volatile": 0, "uncorrected_volatile": 2}
    nv, _ = collector(recording)
    report(machine, nv, t0, 1)
    assert evaluate(t0)["fired"] == 1
    report(machine, nv, t0 + timedelta(seconds=30), 2)
    assert evaluate(t0 + timedelta(seconds=30))["fired"] == 0
    assert "2 uncorrectable ECC error(s)" in alerts("gpu_ecc_uncorrectable")[0].message
    recording["devices"][0]["nvmlDeviceGetTotalEccErrors"]["uncorrected_volatile"] = 0  # the GPU was reset
    report(machine, nv, t0 + timedelta(seconds=60), 3)
    assert evaluate(t0 + timedelta(seconds=60)) == {"fired": 0, "resolved": 1}


def test_a_pending_row_remap_fires_once(machine, t0):
    only("gpu_memory_remap")
    nv, _ = collector(h100())
    report(machine, nv, t0, 1)
    assert evaluate(t0)["fired"] == 0  # the capture: 0 rows, nothing pending
    recording = h100()
    recording["devices"][0]["nvmlDeviceGetRemappedRows"] = [0, 1, 1, 0]
    nv, _ = collector(recording)
    for i in range(3):
        report(machine, nv, t0 + timedelta(seconds=10 * (i + 1)), 2 + i)
        evaluate(t0 + timedelta(seconds=10 * (i + 1)))
    [alert] = alerts("gpu_memory_remap")
    assert "a row remap is pending a GPU reset (1 rows remapped" in alert.message


def test_sustained_thermal_throttling_fires_once(machine, t0):
    only("gpu_throttle")
    recording = h100()
    # Cumulative HW-thermal nanoseconds growing 0.8 s per second: 80 % of the time.
    recording["devices"][0]["nvmlDeviceGetFieldValues"] = [
        {"timestamp_us": i * 1_000_000, "values": {"270": i * 800_000_000, "269": 0, "271": 0, "74": 0}}
        for i in range(200)
    ]
    nv, _ = collector(recording)
    end = t0 + timedelta(minutes=11)
    report(machine, nv, end, 1, windows=66)  # 11 minutes of 10 s windows
    assert evaluate(end)["fired"] == 1
    assert evaluate(end + timedelta(seconds=30))["fired"] == 0
    [alert] = alerts("gpu_throttle")
    assert "clocks held down by heat 80 % of the time over 10 min" in alert.message


def test_a_gpu_nvml_reports_lost_fires_missing_and_nvml_errors_once_each(machine, t0):
    AlertRule.objects.exclude(kind__in=("gpu_missing", "gpu_nvml_errors")).update(enabled=False)
    recording = h100()
    nv, _ = collector(recording)
    report(machine, nv, t0, 1)
    assert evaluate(t0)["fired"] == 0
    lost = {"nvml_error": pynvml.NVML_ERROR_GPU_IS_LOST}
    for call in ("nvmlDeviceGetPowerUsage", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo_v2"):
        recording["devices"][0][call] = lost
    for i in range(1, 20):
        at = t0 + timedelta(seconds=10 * i)
        report(machine, nv, at, 1 + i)
        evaluate(at)
    assert len(alerts("gpu_nvml_errors")) == 1 and "GPU is lost" in alerts("gpu_nvml_errors")[0].message
    [missing] = alerts("gpu_missing")
    assert "NVIDIA H100 80GB HBM3" in missing.message and "no longer listed by NVML or is lost" in missing.message


def test_a_gpu_gone_from_the_inventory_after_a_restart_fires_missing(machine, t0):
    only("gpu_missing")
    two = h100()
    second = dict(two["devices"][0], nvmlDeviceGetUUID="GPU-11111111-1111-1111-1111-111111111111")
    two["devices"].append(second)
    report(machine, collector(two)[0], t0, 1)
    assert evaluate(t0)["fired"] == 0
    # The agent restarts and NVML lists one GPU: the inventory loses the second.
    for i in range(1, 20):
        at = t0 + timedelta(seconds=10 * i)
        report(machine, collector(h100())[0], at, 1 + i)
        evaluate(at)
    [alert] = alerts("gpu_missing")
    assert "GPU-11111111-1111-1111-1111-111111111111" in alert.message


def test_a_missing_gpu_says_how_long_it_is_missing_and_listed_ones_are_marked_every_5_minutes(machine, t0):
    """The listed GPUs' last_listed_at is written by machine in one statement, once per
    LISTED_RESOLUTION (5 min), not on every run; a missing one is timed from the first run that
    missed it, and one listed again is marked at once."""
    only("gpu_missing")
    two = h100()
    second_uuid = "GPU-22222222-2222-2222-2222-222222222222"
    two["devices"].append(dict(two["devices"][0], nvmlDeviceGetUUID=second_uuid))

    def run(minute: int, recording: dict[str, Any]) -> dict[str, KnownGpu]:
        report(machine, collector(recording)[0], t0 + timedelta(minutes=minute), 1 + minute)
        evaluate(t0 + timedelta(minutes=minute))
        return {k.uuid: k for k in KnownGpu.objects.filter(machine=machine)}

    for i in range(3):
        known = run(i, two)
    assert {k.last_listed_at for k in known.values()} == {t0}, "not rewritten each run"
    for i in range(3, 9):  # one GPU from minute 3; the rule waits its threshold (2 min) before firing
        known = run(i, h100())
    assert known[h100_uuid()].last_listed_at == t0 + timedelta(minutes=5) and known[h100_uuid()].missing_since is None
    assert known[second_uuid].last_listed_at == t0 and known[second_uuid].missing_since == t0 + timedelta(minutes=3)
    [alert] = alerts("gpu_missing")
    assert alert.fired_at == t0 + timedelta(minutes=5) and f"{second_uuid}, last at index 1" in alert.message
    assert "for 2 min" in alert.message  # from the first run that missed it (minute 3) to the firing (minute 5)

    known = run(9, two)  # back
    assert known[second_uuid].missing_since is None and known[second_uuid].last_listed_at == t0 + timedelta(minutes=9)
    assert alerts("gpu_missing")[0].resolved_at == t0 + timedelta(minutes=9)


def h100_uuid() -> str:
    return h100()["devices"][0]["nvmlDeviceGetUUID"]


def test_the_rules_share_one_read_of_the_fleets_devices(machine, t0):
    """Each rule used to read every machine with its devices and newest window (findings.Fleet)."""
    nv, _ = collector(h100())
    report(machine, nv, t0, 1)
    for i in range(2, 5):
        other = Machine.objects.create(name=f"gpu-{i:02d}")
        report(other, nv, t0, 1)
    with CaptureQueriesContext(connection) as queries:
        evaluate(t0)
    reads = [q["sql"] for q in queries.captured_queries if 'FROM "fleet_accelerator"' in q["sql"]]
    assert len(reads) == 1, reads


def test_a_gpu_lost_when_first_seen_is_remembered_as_missing_since_then(machine, t0):
    only("gpu_missing")
    recording = h100()
    recording["devices"][0]["nvmlDeviceGetPowerUsage"] = {"nvml_error": pynvml.NVML_ERROR_GPU_IS_LOST}
    report(machine, collector(recording)[0], t0, 1)
    assert evaluate(t0)["fired"] == 0
    [known] = KnownGpu.objects.filter(machine=machine)
    assert known.uuid == h100_uuid() and known.last_listed_at == t0 and known.missing_since == t0
    report(machine, collector(recording)[0], t0 + timedelta(minutes=3), 2)
    assert evaluate(t0 + timedelta(minutes=3))["fired"] == 1


def test_a_gpu_listed_at_another_index_is_remembered_there(machine, t0):
    only("gpu_missing")
    two = h100()
    second_uuid = "GPU-33333333-3333-3333-3333-333333333333"
    two["devices"].append(dict(two["devices"][0], nvmlDeviceGetUUID=second_uuid))
    report(machine, collector(two)[0], t0, 1)
    evaluate(t0)
    swapped = h100()
    swapped["devices"] = [two["devices"][1], two["devices"][0]]
    report(machine, collector(swapped)[0], t0 + timedelta(minutes=1), 2)
    assert evaluate(t0 + timedelta(minutes=1))["fired"] == 0
    assert {k.uuid: k.index for k in KnownGpu.objects.filter(machine=machine)} == {second_uuid: 0, h100_uuid(): 1}


def test_the_counter_and_missing_rules_write_a_fleets_first_rows_in_one_statement_each(machine, t0):
    AlertRule.objects.exclude(kind__in=("gpu_xid", "gpu_missing")).update(enabled=False)
    nv, _ = collector(h100())
    report(machine, nv, t0, 1)
    for i in range(2, 6):
        report(Machine.objects.create(name=f"gpu-{i:02d}"), nv, t0, 1)
    with CaptureQueriesContext(connection) as queries:
        evaluate(t0)
    inserts = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert sum('"alerts_gpuwatch"' in q for q in inserts) == 1
    assert sum('"alerts_knowngpu"' in q for q in inserts) == 1
    assert KnownGpu.objects.count() == 5
    assert GpuWatch.objects.count() == 5 and not GpuWatch.objects.exclude(value=0).exists()
