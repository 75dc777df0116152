"""Migrations keep the data: rows written under an older schema survive the move to the newest."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

# The schema before telemetry dropped its link to jobs (fleet 0006).
BEFORE = [("fleet", "0005_worker_policy"), ("jobs", "0004_log_bytes")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_token_rows_linked_to_a_job_keep_counting_for_it_after_the_link_is_dropped():
    old = migrate(BEFORE)
    user = old.get_model("auth", "User").objects.create(username="op")
    machine = old.get_model("fleet", "Machine").objects.create(name="gpu-01")
    job = old.get_model("jobs", "Job").objects.create(owner=user, name="t", kind="train", argv=["x"], gpus=0)
    old.get_model("jobs", "JobAttempt").objects.create(job=job, number=1, machine=machine)
    Sample = old.get_model("fleet", "ThroughputSample")
    ts = datetime(2026, 11, 20, tzinfo=UTC)
    Sample.objects.create(
        machine=machine, seq=1, job=job, job_key=job.pk, source="progress", ts=ts, interval_s=10, train_tokens=5120
    )
    Sample.objects.create(
        machine=machine, seq=1, job=None, job_key=0, source="report", ts=ts, interval_s=10, generated_tokens=7
    )

    executor = MigrationExecutor(connection)
    migrate(executor.loader.graph.leaf_nodes())

    from dashboard.fleet.models import ThroughputSample
    from dashboard.jobs import throughput as job_throughput
    from dashboard.jobs.models import Job

    assert ThroughputSample.objects.count() == 2
    assert job_throughput.job_summary(Job.objects.get(pk=job.pk))["train"]["total_tokens"] == 5120
