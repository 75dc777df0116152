"""Token rollups: written by ingest, each window once with its best source; what long token charts read."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from django.db import connection

from conftest import make_batch
from dashboard.fleet import throughput
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import ThroughputRollup, ThroughputSample
from dashboard.fleet.payload import MAX_BIGINT, Batch

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
backfill = importlib.import_module("dashboard.fleet.migrations.0016_throughput_rollup").backfill


def windows(machine, seqs, end: datetime, tokens) -> None:
    """Windows of 10 s ending at ``end`` and every 10 s before it; ``tokens(i)``: the i-th's entries."""
    batch = make_batch(seqs, ts=end.timestamp(), gpus=0)
    for i, sample in enumerate(batch["samples"]):
        sample["tokens"] = tokens(i)
    store_batch(machine, Batch.model_validate(batch))


def rollups(resolution: int) -> list[tuple]:
    return list(
        ThroughputRollup.objects.filter(resolution_s=resolution)
        .order_by("machine_id", "bucket", "job_key")
        .values_list("bucket", "job_key", "prompt_tokens", "generated_tokens", "train_tokens")
    )


def two_sources(i: int) -> list[dict]:
    """Job 7's output and its engine both count its window (the engine more); 5 outside any job."""
    return [
        {"job_id": 7, "source": "progress", "prompt": 30, "generated": 100 + i},
        {"job_id": 7, "source": "prometheus", "prompt": 20, "generated": 120 + i},
        {"job_id": None, "source": "report", "train": 5},
    ]


@pytest.mark.django_db
def test_ingest_adds_each_new_window_once_with_the_source_that_counted_most(machine):
    # Eight windows ending 10:00:10 ... 10:01:20: five in the 10:00 minute, three in 10:01.
    windows(machine, range(1, 9), T0 + timedelta(seconds=80), two_sources)
    minute = T0 + timedelta(minutes=1)
    assert rollups(60) == [
        (T0, 0, 0, 0, 25),
        (T0, 7, 5 * 30, sum(120 + i for i in range(5)), 0),
        (minute, 0, 0, 0, 15),
        (minute, 7, 3 * 30, 125 + 126 + 127, 0),
    ]
    assert rollups(3600) == [(T0, 0, 0, 0, 40), (T0, 7, 8 * 30, sum(120 + i for i in range(8)), 0)]
    # A replay (a lost reply) adds nothing; the next window adds itself.
    windows(machine, range(1, 9), T0 + timedelta(seconds=80), two_sources)
    windows(machine, range(5, 10), T0 + timedelta(seconds=90), two_sources)
    assert rollups(3600) == [(T0, 0, 0, 0, 45), (T0, 7, 9 * 30, sum(120 + i for i in range(8)) + 124, 0)]


@pytest.mark.django_db
def test_a_count_past_the_columns_limit_saturates_and_the_batch_is_stored(machine):
    ThroughputRollup.objects.create(
        machine=machine, resolution_s=3600, bucket=T0, job_key=0, generated_tokens=MAX_BIGINT - 10
    )
    windows(machine, [1], T0 + timedelta(seconds=10), lambda i: [{"source": "report", "generated": 10**15}])
    assert ThroughputRollup.objects.get(resolution_s=3600).generated_tokens == MAX_BIGINT
    assert ThroughputSample.objects.get().generated_tokens == 10**15


@pytest.fixture
def two_days(machine):
    """Two days of windows, one a minute, from two sources."""
    start = T0 - timedelta(days=2)
    for half in range(4):  # four batches of half a day (a batch holds at most 1,000 windows)
        seqs = range(1 + half * 720, 1 + (half + 1) * 720)
        batch = make_batch(seqs, ts=T0.timestamp(), gpus=0)
        for i, sample in enumerate(batch["samples"]):
            sample["ts"] = (start + timedelta(minutes=half * 720 + i + 1)).timestamp() - 0.5
            sample["tokens"] = two_sources(i % 50)
        store_batch(machine, Batch.model_validate(batch))


@pytest.mark.django_db
def test_a_long_token_chart_reads_rollups_and_draws_what_the_windows_hold(two_days, machine):
    since, until = T0 - timedelta(days=2), T0
    chart = throughput.machine_series(machine, "tokens.generated", since, until, {7: "#7 serve"})
    assert chart["step_s"] == 300
    [series] = chart["series"]
    # The same steps summed straight from the windows (the best source's count of each).
    raw = throughput.step_sums(
        ThroughputSample.objects.filter(machine=machine, ts__gte=since, ts__lt=until),
        ["generated_tokens"],
        300,
        "job_key",
    )
    assert series["mean"] == [round(n / 300, 3) for _, _, n in raw]
    assert series["t"] == [(start + 150) * 1000 for _, start, _ in raw]
    fleet = throughput.fleet_series("tokens.generated", since, until)
    assert fleet["series"][0]["mean"] == series["mean"]
    # Past three days the chart reads hours.
    week = throughput.machine_series(machine, "tokens.train", T0 - timedelta(days=7), T0)
    assert week["step_s"] == 3600 and week["series"][0]["mean"] == [round(60 * 5 / 3600, 3)] * 48


@pytest.mark.django_db
def test_the_migration_fills_the_rollups_ingest_would_have_written(two_days):
    written = {r: rollups(r) for r in ThroughputRollup.RESOLUTIONS}
    ThroughputRollup.objects.all().delete()
    backfill(None, SimpleNamespace(connection=connection))  # what RunPython passes, as far as it reads
    assert {r: rollups(r) for r in ThroughputRollup.RESOLUTIONS} == written


@pytest.mark.django_db
def test_rebuilding_from_the_rows_gives_what_ingest_wrote(two_days, machine):
    windows(
        machine, [9999], T0 + timedelta(seconds=10), lambda i: [{"source": "report", "prompt": 0}]
    )  # counts nothing
    written = {r: rollups(r) for r in ThroughputRollup.RESOLUTIONS}
    assert throughput.rebuild_rollups([machine.pk]) == len(written[60]) + len(written[3600])
    assert {r: rollups(r) for r in ThroughputRollup.RESOLUTIONS} == written


@pytest.mark.django_db
def test_a_minute_still_filling_is_not_drawn_as_a_dip(machine):
    windows(machine, range(1, 9), T0 + timedelta(seconds=80), two_sources)  # 10:00:10 ... 10:01:20
    at = throughput.fleet_series("tokens.generated", T0, T0 + timedelta(seconds=90))  # 10:01 is not over
    assert at["step_s"] == 60 and at["series"][0]["t"] == [int(T0.timestamp() + 30) * 1000]
    assert at["series"][0]["mean"] == [round(sum(120 + i for i in range(5)) / 60, 3)]
    later = throughput.fleet_series("tokens.generated", T0, T0 + timedelta(minutes=2))
    assert len(later["series"][0]["t"]) == 2
