"""End to end with a real server and worker: team A at quota borrows team B's idle GPU with a
preemptible training job; B submits; A's job checkpoints and is requeued within one placement
tick; the chargeback CSV for the period shows both teams' allocated and used GPU-hours as the
attempts and telemetry give them."""

from __future__ import annotations

import csv
import io
import sys
import time

import pytest
from django.conf import settings
from django.utils import timezone

from conftest import make_batch
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import GpuSample
from dashboard.fleet.payload import Batch
from dashboard.fleet.tests.test_agent_end_to_end import wait_for
from dashboard.jobs import service, tasks
from dashboard.jobs.models import Job
from dashboard.jobs.tests import test_worker_e2e as e2e
from dashboard.jobs.tests.test_worker_e2e import PY, log_text, settle
from dashboard.teams import service as teams_service

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform != "linux", reason="the worker's process groups are Linux's"),
]
PLACEMENT_TICK_S = settings.CELERY_BEAT_SCHEDULE["place"]["schedule"]
loop = e2e.loop  # the jobs app's fixture: a real server and a real worker for `machine`


def fields(name: str, argv: list[str], team, **kw) -> dict:
    return {
        "name": name,
        "kind": "train",
        "argv": argv,
        "shell": "",
        "workdir": "",
        "env": {},
        "gpus": 1,
        "gpu_memory_gb": 60,
        "priority": 0,
        "max_runtime_s": None,
        "preemptible": False,
        "target": None,
        "team": team,
        **kw,
    }


def test_a_borrower_is_preempted_for_the_owning_team_and_chargeback_matches(
    loop,
    machine,
    owner,
    stranger,
    team_a,
    team_b,
    client,
    admin_user,
):
    start = timezone.now()
    machine.team = team_b
    machine.save(update_fields=["team"])
    teams_service.update_team(None, team_a, gpu_quota=0)  # team A is at its quota already
    seq = iter(range(2, 1000))

    def telemetry(used: float) -> None:
        batch = make_batch([next(seq)], gpus=1)
        batch["samples"][0]["gpus"][0]["mem_used_bytes"] = {"min": used, "mean": used, "max": used}
        store_batch(machine, Batch.model_validate(batch))

    telemetry(0)
    trainer = ["python", "-m", "hwprobe.workloads", "train", "--seconds", "0", "--resume"]
    borrower = service.submit(owner, fields("borrower", trainer, team_a, preemptible=True))
    assert tasks.place() == 1
    borrower.refresh_from_db()
    assert borrower.borrowing and borrower.machine == machine
    wait_for(lambda: "HWPROBE_PROGRESS" in log_text(borrower), 40, "the borrower to train")
    telemetry(65e9)  # the borrower holds the GPU's memory now

    owners_job = service.submit(
        stranger, fields("owners", [PY, "-c", "import time; print('mine'); time.sleep(0.5)"], team_b)
    )
    asked = time.monotonic()
    assert tasks.place() == 0  # no room yet: the borrower is asked to give the GPU back
    assert Job.objects.get(pk=borrower.pk).preempt_requested
    try:
        wait_for(
            lambda: Job.objects.get(pk=borrower.pk).status == "queued", PLACEMENT_TICK_S, "the borrower to requeue"
        )
    except AssertionError:
        raise AssertionError(f"{Job.objects.get(pk=borrower.pk).status}; worker:\n{loop.output()}") from None
    assert time.monotonic() - asked < PLACEMENT_TICK_S  # within one placement tick
    assert [a.outcome for a in Job.objects.get(pk=borrower.pk).attempts.all()] == ["preempted"]
    assert "checkpoint" in log_text(borrower).lower() or (loop.jobs_dir / str(borrower.pk) / "mingru.npz").exists()

    telemetry(0)
    assert tasks.place() == 1  # the owners' job, not the borrower
    owners_job = settle(owners_job, loop)
    assert owners_job.status == "succeeded" and log_text(owners_job) == "mine\n"
    assert Job.objects.get(pk=borrower.pk).status == "queued"  # still over quota, waiting to borrow again
    service.cancel(owner, Job.objects.get(pk=borrower.pk))

    client.force_login(admin_user)
    end = timezone.now()
    r = client.get("/reports/teams.csv", {"from": start.isoformat(), "to": end.isoformat()})
    rows = {row["team"]: row for row in csv.DictReader(io.StringIO(r.content.decode()))}
    for team, job in (("team-a", borrower), ("team-b", owners_job)):
        attempts = [a for a in Job.objects.get(pk=job.pk).attempts.all() if a.started_at]
        allocated = sum((a.ended_at - a.started_at).total_seconds() * len(a.gpus) for a in attempts) / 3600
        used = (
            sum(
                s.util_percent_mean / 100 * s.interval_s
                for a in attempts
                for s in GpuSample.objects.filter(
                    machine=machine, gpu_index__in=a.gpus, ts__gte=a.started_at, ts__lt=a.ended_at
                )
            )
            / 3600
        )
        assert float(rows[team]["allocated_gpu_hours"]) == pytest.approx(allocated, abs=1e-4)
        assert float(rows[team]["used_gpu_hours"]) == pytest.approx(used, abs=1e-4)
        assert int(rows[team]["attempts"]) == len(attempts)
    assert float(rows["team-a"]["allocated_gpu_hours"]) > 0 and float(rows["team-b"]["allocated_gpu_hours"]) > 0
