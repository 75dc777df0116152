"""A range longer than a machine's data falls back to finer data, and says so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conftest import make_batch
from dashboard.fleet import rollup
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.payload import Batch
from dashboard.fleet.series import machine_series

NOW = datetime(2026, 11, 20, 10, 17, tzinfo=UTC)


@pytest.mark.django_db
def test_seven_days_of_a_machine_with_thirty_minutes_of_data_draws_them_from_raw_windows(machine):
    store_batch(machine, Batch.model_validate(make_batch(range(1, 181), ts=NOW.timestamp())))  # 30 min of 10 s
    rollup.catch_up()
    data = machine_series(machine, "system.cpu_percent", NOW - timedelta(days=7), NOW)
    assert data["resolution_s"] is None  # raw windows, not the one or two hour buckets
    assert len(data["series"][0]["t"]) >= 60
    assert (
        data["note"]
        == "29 min of data in this range: drawn from 10 s windows, since hour rollups would hold too few points"
    )
    assert datetime.fromisoformat(data["data_since"]) == NOW - timedelta(seconds=1790)
    gpu = machine_series(machine, "gpu.util_percent", NOW - timedelta(days=7), NOW)
    assert [len(s["t"]) >= 60 for s in gpu["series"]] == [True, True]


@pytest.mark.django_db
def test_a_range_the_data_fills_keeps_its_resolution_and_has_no_note(machine):
    store_batch(machine, Batch.model_validate(make_batch(range(1, 181), ts=NOW.timestamp())))
    rollup.catch_up()
    data = machine_series(machine, "system.cpu_percent", NOW - timedelta(minutes=30), NOW)
    assert (data["resolution_s"], data["note"], data["data_since"]) == (None, None, None)


@pytest.mark.django_db
def test_rollups_older_than_the_raw_windows_keep_the_coarse_resolution(machine):
    # Raw windows past their retention are gone while the hour rollups stay: the range is all data.
    store_batch(machine, Batch.model_validate(make_batch(range(1, 181), ts=(NOW - timedelta(days=3)).timestamp())))
    store_batch(machine, Batch.model_validate(make_batch(range(181, 361), ts=NOW.timestamp())))
    rollup.catch_up()
    from dashboard.fleet.models import SystemSample

    SystemSample.objects.filter(ts__lt=NOW - timedelta(days=1)).delete()
    data = machine_series(machine, "system.cpu_percent", NOW - timedelta(days=7), NOW)
    assert (data["resolution_s"], data["note"]) == (3600, None)
