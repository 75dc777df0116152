"""Allocated but idle, judged by GPM's SM activity: the 64×64 matmul loop NVML calls 30 % busy.

Windows come from the agent's collector over the H200 GPM recording of that load
(hwprobe/tests/fixtures/gpm/h200_tiny_matmul.json, recorded on a real H200: NVML util 30 %, SM activity 0.49 %)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from dashboard.alerts.evaluate import evaluate
from dashboard.alerts.models import Alert, AlertRule
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import Batch
from dashboard.jobs.models import AuditEvent, Job
from hwprobe.collectors.nvidia import NvidiaCollector
from hwprobe.testing import batches, nvml_replay

pytestmark = pytest.mark.django_db
GPM = Path(__file__).resolve().parents[3] / "hwprobe" / "tests" / "fixtures" / "gpm"


@pytest.fixture
def t0() -> datetime:
    return timezone.now().replace(microsecond=0) - timedelta(hours=2)


def windows(machine: Machine, load: str, start: datetime, minutes: int, seq: int) -> datetime:
    nv = NvidiaCollector(
        nvml=nvml_replay.from_recording(json.loads((GPM / f"h200_{load}.json").read_text())),
        pid_info=lambda pid: (None, None),
    )
    nv.collect()  # the first GPM sample has no pair yet
    end = start + timedelta(minutes=minutes)
    store_batch(
        machine, Batch.model_validate(batches.batch(nv, list(range(seq, seq + 6 * minutes)), end.timestamp())), now=end
    )
    return end


def a_job(owner, machine: Machine, started: datetime, preemptible: bool) -> Job:
    return Job.objects.create(
        owner=owner,
        name="finetune",
        kind="train",
        argv=["x"],
        machine=machine,
        assigned_gpus=[0],
        status="running",
        attempt=1,
        pgid=4242,
        started_at=started,
        preemptible=preemptible,
    )


@pytest.fixture
def rule() -> AlertRule:
    AlertRule.objects.exclude(kind="job_allocated_idle").update(enabled=False)
    found = AlertRule.objects.get(kind="job_allocated_idle")
    assert found.enabled is False  # off by default
    found.enabled, found.threshold, found.level, found.action = True, 10, 10.0, AlertRule.Action.STOP
    found.save()
    return found


@pytest.mark.parametrize(
    ("preemptible", "flag", "action"),
    [(True, "preempt_requested", "alerts.idle_preempt"), (False, "cancel_requested", "alerts.idle_cancel")],
)
def test_a_job_at_30_percent_nvml_but_under_1_percent_sm_is_warned_then_stopped(
    machine, operator, rule, t0, preemptible, flag, action
):
    job = a_job(operator, machine, t0, preemptible)
    end = windows(machine, "tiny_matmul", t0, 11, 1)
    assert evaluate(end)["fired"] == 1
    [alert] = Alert.objects.filter(rule=rule)
    assert "under 10 % SM activity (at most 0.5 %)" in alert.message
    assert AuditEvent.objects.filter(action="alerts.idle_warn", job=job).count() == 1
    job.refresh_from_db()
    assert not getattr(job, flag)  # warned only, for now
    end = windows(machine, "tiny_matmul", end, 10, 100)
    evaluate(end)
    job.refresh_from_db()
    assert getattr(job, flag)
    assert AuditEvent.objects.filter(action=action, job=job).count() == 1
    assert Alert.objects.filter(rule=rule).count() == 1


def test_a_busy_tensor_job_is_not_idle(machine, operator, rule, t0):
    a_job(operator, machine, t0, True)
    end = windows(machine, "matmul_bf16", t0, 11, 1)
    assert evaluate(end)["fired"] == 0
