"""Retention deletes only what is past its age, never raw rows the rollups have not reached."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dashboard.fleet import retention, tasks
from dashboard.fleet.models import (
    GpuRollup,
    GpuSample,
    RollupState,
    SystemRollup,
    SystemSample,
    ThroughputRollup,
    ThroughputSample,
)

UTC = UTC
NOW = datetime(2026, 11, 26, 12, 30, tzinfo=UTC)
RAW_EDGE = datetime(2026, 11, 12, 12, 0, tzinfo=UTC)  # 14 days back, down to the hour
MINUTE_EDGE = datetime(2026, 8, 28, 12, 0, tzinfo=UTC)  # 90 days back
SECOND = timedelta(seconds=1)


@pytest.fixture(autouse=True)
def _defaults(settings):
    settings.RETENTION_RAW_DAYS = 14
    settings.RETENTION_MINUTE_DAYS = 90
    settings.RETENTION_HOUR_DAYS = 0
    settings.RETENTION_THROUGHPUT_DAYS = 0


def raw(machine, seq: int, ts: datetime, received: datetime) -> None:
    SystemSample.objects.create(machine=machine, seq=seq, ts=ts, interval_s=10, count=10, received_at=received)
    GpuSample.objects.create(
        machine=machine, seq=seq, gpu_index=0, ts=ts, interval_s=10, count=10, received_at=received
    )
    ThroughputSample.objects.create(
        machine=machine, seq=seq, source="progress", ts=ts, interval_s=10, generated_tokens=1, received_at=received
    )


def rolled(machine, resolution: int, bucket: datetime) -> None:
    SystemRollup.objects.create(machine=machine, resolution_s=resolution, bucket=bucket, count=60)
    GpuRollup.objects.create(machine=machine, gpu_index=0, resolution_s=resolution, bucket=bucket, count=60)
    ThroughputRollup.objects.create(machine=machine, resolution_s=resolution, bucket=bucket, generated_tokens=60)


def seqs(model) -> list[int]:
    return sorted(model.objects.values_list("seq", flat=True))


@pytest.mark.django_db
def test_raw_rows_past_their_age_go_and_younger_ones_stay(machine):
    RollupState.objects.create(name="rollup", watermark=NOW - timedelta(seconds=30))
    long_ago = RAW_EDGE
    raw(machine, 1, RAW_EDGE - timedelta(days=3), long_ago)
    raw(machine, 2, RAW_EDGE - SECOND, long_ago)  # the last second before the edge
    raw(machine, 3, RAW_EDGE, long_ago)  # on the edge: 14 days old to the hour, kept
    raw(machine, 4, NOW - timedelta(minutes=5), NOW - timedelta(minutes=5))
    done = retention.purge(NOW)
    assert seqs(SystemSample) == seqs(GpuSample) == [3, 4]
    assert done["systemsample"] == 2 and done["gpusample"] == 2
    # Token counts feed RoI's lifetime value: kept unless RETENTION_THROUGHPUT_DAYS says otherwise.
    assert seqs(ThroughputSample) == [1, 2, 3, 4]


@pytest.mark.django_db
def test_raw_rows_the_rollups_have_not_reached_are_kept_whatever_their_age(machine):
    # A spool replayed after weeks offline: old windows, received just now, not rolled up yet.
    raw(machine, 1, RAW_EDGE - timedelta(days=10), NOW - timedelta(seconds=10))
    raw(machine, 2, RAW_EDGE - timedelta(days=10), RAW_EDGE)
    assert "systemsample" not in retention.purge(NOW)  # no watermark at all: nothing has been rolled up
    assert seqs(SystemSample) == [1, 2]
    RollupState.objects.create(name="rollup", watermark=NOW - timedelta(seconds=30))
    retention.purge(NOW)
    assert seqs(SystemSample) == seqs(GpuSample) == [1]


@pytest.mark.django_db
def test_minute_rollups_go_after_90_days_and_hours_stay(machine):
    for bucket in (
        MINUTE_EDGE - timedelta(days=200),
        MINUTE_EDGE - timedelta(minutes=1),
        MINUTE_EDGE,
        NOW - timedelta(days=1),
    ):
        rolled(machine, 60, bucket)
        rolled(machine, 3600, bucket.replace(minute=0))
    done = retention.purge(NOW)
    assert sorted(SystemRollup.objects.filter(resolution_s=60).values_list("bucket", flat=True)) == [
        MINUTE_EDGE,
        NOW - timedelta(days=1),
    ]
    assert GpuRollup.objects.filter(resolution_s=60).count() == 2
    assert ThroughputRollup.objects.filter(resolution_s=60).count() == 2  # token rollups alike
    assert SystemRollup.objects.filter(resolution_s=3600).count() == 4  # hours are kept for years
    assert ThroughputRollup.objects.filter(resolution_s=3600).count() == 4
    assert done["systemrollup_60s"] == 2 and "systemrollup_3600s" not in done


@pytest.mark.django_db
def test_hours_and_tokens_go_too_when_an_age_is_set(machine, settings):
    settings.RETENTION_HOUR_DAYS = 365
    settings.RETENTION_THROUGHPUT_DAYS = 30
    rolled(machine, 3600, NOW.replace(minute=0) - timedelta(days=400))
    rolled(machine, 3600, NOW.replace(minute=0) - timedelta(days=300))
    raw(machine, 1, NOW - timedelta(days=31), NOW - timedelta(days=31))
    raw(machine, 2, NOW - timedelta(days=29), NOW - timedelta(days=29))
    retention.purge(NOW)
    assert (
        SystemRollup.objects.filter(resolution_s=3600).count()
        == GpuRollup.objects.filter(resolution_s=3600).count()
        == 1
    )
    assert seqs(ThroughputSample) == [2]


@pytest.mark.django_db
def test_deletes_go_in_batches_until_nothing_is_left(machine, monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    monkeypatch.setattr(retention, "BATCH", 3)
    RollupState.objects.create(name="rollup", watermark=NOW)
    for seq in range(1, 11):
        raw(machine, seq, RAW_EDGE - timedelta(days=1, seconds=seq), RAW_EDGE)
    with CaptureQueriesContext(connection) as queries:
        done = retention.purge(NOW)
    assert done["systemsample"] == done["gpusample"] == 10
    assert not SystemSample.objects.exists() and not GpuSample.objects.exists()
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 8  # 3 + 3 + 3 + 1 rows, for each of the two tables


@pytest.mark.django_db
def test_the_task_runs_purge_and_beat_runs_it_hourly(machine, settings):
    RollupState.objects.create(name="rollup", watermark=NOW)
    raw(machine, 1, datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC))
    assert tasks.retention()["systemsample"] == 1
    assert settings.CELERY_BEAT_SCHEDULE["retention"] == {"task": "dashboard.fleet.tasks.retention", "schedule": 3600.0}


def test_zero_days_keeps_rows_forever():
    assert retention.cutoff(NOW, 0) is None
    assert retention.cutoff(NOW, 14) == RAW_EDGE


@pytest.mark.django_db(transaction=True)  # rows committed, as retention finds them (no pending FK checks)
def test_on_postgresql_whole_days_past_their_age_go_as_partitions(machine):
    from django.db import connection

    from dashboard.fleet import partitions

    if not partitions.enabled():
        pytest.skip("the raw tables are partitioned on PostgreSQL only")
    RollupState.objects.create(name="rollup", watermark=NOW - timedelta(seconds=30))
    old_day = (RAW_EDGE - timedelta(days=3)).date()
    for table in partitions.TABLES:
        partitions.create_day(table, old_day)
    raw(machine, 1, RAW_EDGE - timedelta(days=3), RAW_EDGE - timedelta(days=3))
    raw(machine, 2, NOW - timedelta(minutes=5), NOW - timedelta(minutes=5))
    done = retention.purge(NOW)
    assert done["systemsample_days"] == done["gpusample_days"] == 1
    assert seqs(SystemSample) == seqs(GpuSample) == [2]
    assert old_day not in partitions.days("fleet_gpusample")
    assert old_day in partitions.days("fleet_throughputsample")  # token counts are kept by default
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM fleet_throughputsample WHERE seq = 1")
        assert cursor.fetchone()[0] == 1


@pytest.mark.django_db
def test_token_rows_past_the_raw_age_keep_their_counts_but_lose_their_one_second_points(machine):
    point = [[0, 1.0, 0, 1, 0]]
    for seq, ts in ((1, RAW_EDGE - SECOND), (2, RAW_EDGE)):
        ThroughputSample.objects.create(
            machine=machine, seq=seq, source="progress", ts=ts, interval_s=10, generated_tokens=5, points=point
        )
    retention.purge(NOW)
    kept = dict(ThroughputSample.objects.values_list("seq", "points"))
    assert kept == {1: None, 2: point}  # the job chart reads the old one's window instead
    assert sum(ThroughputSample.objects.values_list("generated_tokens", flat=True)) == 10
