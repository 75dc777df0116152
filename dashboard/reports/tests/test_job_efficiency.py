"""The period's MFU (training) and bandwidth efficiency (serving) in the machine report, its CSV,
RoI and the assemblies comparison: each job's figure from economics.efficiency, weighted by the
time the job ran in the period."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from dashboard.economics.assemblies import comparison
from dashboard.economics.efficiency import job_efficiency
from dashboard.economics.roi import machine_roi
from dashboard.fleet.models import Accelerator, Machine, ThroughputSample
from dashboard.jobs.models import Job, JobAttempt
from dashboard.reports.report import machine_report, machine_report_csv

pytestmark = pytest.mark.django_db


@pytest.fixture
def now() -> datetime:
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def h200(machine) -> Machine:
    Accelerator.objects.create(machine=machine, index=0, vendor="nvidia", name="NVIDIA H200", uuid="GPU-0")
    # In service for a day: RoI starts at the hour the machine entered service, and a machine created
    # this minute would put the jobs of the last hour before that start (whatever the clock says).
    Machine.objects.filter(pk=machine.pk).update(created_at=timezone.now() - timedelta(days=1))
    machine.refresh_from_db()
    return machine


def ran(owner, machine, kind: str, seq: int, tokens: dict[str, int], start: datetime, end: datetime) -> Job:
    """A job that ran from ``start`` to ``end`` and produced ``tokens`` in one 10 s window."""
    job = Job.objects.create(
        owner=owner,
        name=f"{kind}-{seq}",
        kind=kind,
        argv=["x"],
        machine=machine,
        assigned_gpus=[0],
        status="succeeded",
        attempt=1,
        started_at=start,
        finished_at=end,
        model_params_b=8.0,
        precision="bf16" if kind == "train" else "fp16",
    )
    JobAttempt.objects.create(job=job, number=1, machine=machine, gpus=[0], started_at=start, ended_at=end)
    ThroughputSample.objects.create(
        machine=machine, seq=seq, job_key=job.pk, source="progress", ts=end, interval_s=10.0, **tokens
    )
    return job


@pytest.fixture
def jobs(h200, operator, now):
    hour = now - timedelta(hours=1)
    return {
        # 30 min in the period, then 10 min of another job at half the speed; one job before the period.
        "long": ran(
            operator,
            h200,
            "train",
            1,
            {"train_tokens": 100_000},
            hour + timedelta(minutes=5),
            hour + timedelta(minutes=35),
        ),
        "short": ran(
            operator,
            h200,
            "train",
            2,
            {"train_tokens": 50_000},
            hour + timedelta(minutes=40),
            hour + timedelta(minutes=50),
        ),
        "before": ran(
            operator,
            h200,
            "train",
            3,
            {"train_tokens": 9_000},
            hour - timedelta(minutes=30),
            hour - timedelta(minutes=5),
        ),
        "serve": ran(
            operator,
            h200,
            "serve",
            4,
            {"generated_tokens": 2_000},
            hour + timedelta(minutes=10),
            hour + timedelta(minutes=20),
        ),
    }


def test_the_report_weights_each_training_jobs_mfu_by_its_time_in_the_period(h200, jobs, now):
    long, short = job_efficiency(jobs["long"])["percent"], job_efficiency(jobs["short"])["percent"]
    assert long == pytest.approx(2 * short)
    report = machine_report(h200, now - timedelta(hours=1), now, now=now)
    eff = report["current"]["efficiency"]
    assert eff["mfu_percent"] == pytest.approx((long * 30 + short * 10) / 40)
    assert (eff["mfu_jobs"], eff["mfu_hours"]) == (2, pytest.approx(40 / 60))
    assert eff["bandwidth_percent"] == pytest.approx(job_efficiency(jobs["serve"])["percent"])
    rows = {r["label"]: r for r in report["summary"]}
    assert rows["Mean MFU of training jobs, by time (%)"]["now"] == pytest.approx(eff["mfu_percent"])
    assert rows["Mean MFU of training jobs, by time (%)"]["before"] == pytest.approx(
        job_efficiency(jobs["before"])["percent"]
    )


def test_the_csv_machine_row_carries_both_figures(h200, jobs, now):
    report = machine_report(h200, now - timedelta(hours=1), now, now=now)
    header, *rows = machine_report_csv(report)
    [current] = [r for r in rows if r[0] == "current" and r[header.index("scope")] == "machine"]
    assert current[header.index("mfu_percent")] == round(report["current"]["efficiency"]["mfu_percent"], 4)
    assert current[header.index("bandwidth_efficiency_percent")] == round(
        report["current"]["efficiency"]["bandwidth_percent"], 4
    )


def test_roi_and_the_assemblies_show_the_same_figures(h200, jobs, now):
    eff = machine_report(h200, now - timedelta(hours=1), now, now=now)["current"]["efficiency"]
    assert machine_roi(h200, since=now - timedelta(hours=1), until=now, now=now)["efficiency"]["mfu_jobs"] >= 2
    [row] = comparison(since=now - timedelta(hours=1), until=now)["assemblies"]
    assert row["mfu_percent"] == pytest.approx(eff["mfu_percent"])
    assert row["bandwidth_percent"] == pytest.approx(eff["bandwidth_percent"])


def test_a_job_without_a_model_size_counts_as_unknown_not_as_zero(h200, operator, now):
    job = ran(
        operator, h200, "train", 9, {"train_tokens": 1_000}, now - timedelta(minutes=30), now - timedelta(minutes=10)
    )
    Job.objects.filter(pk=job.pk).update(model_params_b=None, name="x")
    eff = machine_report(h200, now - timedelta(hours=1), now, now=now)["current"]["efficiency"]
    assert (eff["mfu_percent"], eff["mfu_jobs"], eff["mfu_unknown"]) == (None, 0, 1)
