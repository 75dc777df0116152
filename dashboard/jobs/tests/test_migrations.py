"""Migrations keep the data: rows written under an older schema survive the move to the newest."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from conftest import migrate

# The schema before telemetry dropped its link to jobs (fleet 0006).
BEFORE = [("fleet", "0005_worker_policy"), ("jobs", "0004_log_bytes")]


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


@pytest.mark.django_db(transaction=True)
def test_a_machines_hot_state_moves_to_its_own_row_with_its_values():
    old = migrate([("fleet", "0010_token_active_time")])
    seen = datetime(2026, 11, 20, 12, tzinfo=UTC)
    latest = {"seq": 7, "ts": seen.timestamp(), "gpus": [{"index": 0, "util_percent": 40.0, "mem_used_bytes": 5}]}
    old.get_model("fleet", "Machine").objects.create(
        name="gpu-01", last_seen_at=seen, last_seq=7, spool_id="s1", seq_offset=3, spool_dropped=2, latest=latest
    )
    old.get_model("fleet", "Machine").objects.create(name="never-seen")

    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    from dashboard.fleet.models import Machine

    m = Machine.objects.get(name="gpu-01")
    assert (m.last_seen_at, m.last_seq, m.spool_id, m.seq_offset, m.spool_dropped) == (seen, 7, "s1", 3, 2)
    assert m.latest == latest
    assert (m.state.gpu_count, m.state.gpu_util_percent, m.state.gpu_mem_used_bytes) == (1, 40.0, 5.0)
    assert Machine.objects.get(name="never-seen").last_seen_at is None
