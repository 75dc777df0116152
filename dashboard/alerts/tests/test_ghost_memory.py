"""Ghost memory from replayed NVML data: a job's process group killed outside the worker while
its GPU memory stays held raises the alert, and the cleanup runs only after an operator confirms.

The GPU processes are the real H100 load capture's (two memhogs and gpu_burn); which of them
still exist and which group they are in is the scenario, given to the agent's collector as the
host's process table would."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from dashboard.alerts.evaluate import evaluate
from dashboard.alerts.models import Alert, AlertRule, CleanupRequest, GhostProcess
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import Batch
from dashboard.jobs.models import AuditEvent, Job, JobAttempt
from hwprobe.collectors.nvidia import NvidiaCollector
from hwprobe.testing import batches, nvml_replay
from hwprobe.tests.conftest import capture_q

pytestmark = pytest.mark.django_db

# The job's group 11327: its leader was killed (gone from the process table, NVML still charges
# it), its child 11328 lives on. gpu_burn (11345) was started by hand, outside any job.
EXISTS = {11327: False, 11328: True, 11345: True}
PGID = {11327: None, 11328: 11327, 11345: 11345}


@pytest.fixture
def t0() -> datetime:
    return timezone.now().replace(microsecond=0) - timedelta(hours=2)


def report(machine: Machine, at: datetime, seq: int) -> None:
    nv = NvidiaCollector(
        nvml=nvml_replay.from_nvidia_smi_q(*capture_q("h100", "load")),
        pid_info=lambda pid: (None, None),
        pgid_of=PGID.get,
        pid_exists=EXISTS.get,
    )
    store_batch(machine, Batch.model_validate(batches.batch(nv, [seq], end_ts=at.timestamp())), now=at)


def a_lost_job(owner, machine: Machine, at: datetime) -> Job:
    job = Job.objects.create(
        owner=owner,
        name="pretrain",
        kind="train",
        argv=["python", "train.py"],
        machine=machine,
        assigned_gpus=[0],
        status="lost",
        attempt=1,
        pgid=11327,
        started_at=at - timedelta(hours=1),
        finished_at=at,
    )
    JobAttempt.objects.create(job=job, number=1, machine=machine, gpus=[0], started_at=job.started_at, ended_at=at)
    return job


def test_a_killed_jobs_held_memory_alerts_once_and_is_cleaned_only_after_an_operator_confirms(
    client, machine, operator, viewer, agent_token, t0
):
    AlertRule.objects.exclude(kind="ghost_memory").update(enabled=False)
    job = a_lost_job(operator, machine, t0)
    report(machine, t0, 1)
    assert evaluate(t0)["fired"] == 0  # held for 0 of the rule's 30 minutes
    for i, minutes in enumerate((10, 20, 31, 32)):
        report(machine, t0 + timedelta(minutes=minutes), 2 + i)
        evaluate(t0 + timedelta(minutes=minutes))
    [alert] = Alert.objects.filter(rule__kind="ghost_memory")
    held = (2566 + 1542 + 15690) / 1024
    assert f"{held:.1f} GiB of GPU memory held" in alert.message
    assert f"2 left by ended job(s) #{job.pk}" not in alert.message  # the dead leader counts as gone
    assert f"1 left by ended job(s) #{job.pk}" in alert.message
    assert "1 dead pid(s)" in alert.message and "gpu_burn pid 11345" in alert.message
    assert "What to do:" in alert.message

    # Nothing is cleaned up before an operator says so.
    auth = {"HTTP_AUTHORIZATION": f"Bearer {agent_token}"}
    assert client.get("/api/v1/agent/cleanups", **auth).json() == {"cleanups": []}

    client.force_login(viewer)
    page = client.get("/alerts/").content.decode()
    assert "GPU memory outside running jobs" in page and "Confirm cleanup" not in page
    client.post(f"/alerts/ghosts/{machine.name}/11327/cleanup/")
    assert not CleanupRequest.objects.exists()

    client.force_login(operator)
    assert "Confirm cleanup" in client.get("/alerts/").content.decode()
    r = client.post(f"/alerts/ghosts/{machine.name}/11327/cleanup/")
    assert r.status_code == 302
    [request] = CleanupRequest.objects.all()
    assert (request.pgid, request.pids, request.job, request.confirmed_by) == (11327, [11328], job, operator)
    assert AuditEvent.objects.filter(action="ghost.cleanup_confirm", job=job, actor=operator).exists()
    # Unknown processes are reported only: there is nothing to confirm for gpu_burn's group.
    client.post(f"/alerts/ghosts/{machine.name}/11345/cleanup/")
    assert CleanupRequest.objects.count() == 1

    client.logout()
    assert client.get("/api/v1/agent/cleanups", **auth).json() == {
        "cleanups": [{"id": request.pk, "pgid": 11327, "pids": [11328], "job_id": job.pk}]
    }
    r = client.post(
        f"/api/v1/agent/cleanups/{request.pk}",
        {"outcome": "done", "message": "SIGTERM to group 11327"},
        content_type="application/json",
        **auth,
    )
    assert r.json() == {"status": "done"}
    assert client.get("/api/v1/agent/cleanups", **auth).json() == {"cleanups": []}
    assert AuditEvent.objects.filter(action="ghost.cleanup_done", job=job).exists()


def test_processes_of_a_running_job_and_allowed_services_are_not_ghosts(machine, operator, t0):
    rule = AlertRule.objects.get(kind="ghost_memory")
    AlertRule.objects.exclude(pk=rule.pk).update(enabled=False)
    rule.allowed_processes = "gpu_burn"
    rule.save()
    job = a_lost_job(operator, machine, t0)
    Job.objects.filter(pk=job.pk).update(status="running", finished_at=None)
    EXISTS[11327] = True
    try:
        for minutes in (0, 40):
            report(machine, t0 + timedelta(minutes=minutes), 1 + minutes)
            evaluate(t0 + timedelta(minutes=minutes))
    finally:
        EXISTS[11327] = False
    # 11328 is in the running job's group, gpu_burn is allowed; 11327 has no group (pgid None).
    [alert] = Alert.objects.filter(rule=rule)
    assert "1 outside any job (memhog pid 11327)" in alert.message


def test_a_ghost_seen_again_unchanged_keeps_its_first_sighting_and_moves_its_last(machine, t0):
    """Unchanged rows are marked seen by machine in one statement, once per SEEN_RESOLUTION (5 min);
    a changed or new one is written itself."""
    AlertRule.objects.exclude(kind="ghost_memory").update(enabled=False)

    def seen_at(minutes: int, seq: int) -> set:
        report(machine, t0 + timedelta(minutes=minutes), seq)
        evaluate(t0 + timedelta(minutes=minutes))
        return {g.last_seen_at for g in GhostProcess.objects.filter(machine=machine)}

    assert seen_at(0, 1) == {t0}
    assert seen_at(1, 2) == seen_at(4, 3) == {t0}, "not rewritten each run"
    assert seen_at(6, 4) == {t0 + timedelta(minutes=6)}
    rows = list(GhostProcess.objects.filter(machine=machine).order_by("pid"))
    assert [g.pid for g in rows] == [11327, 11328, 11345]
    assert {g.first_seen_at for g in rows} == {t0}
