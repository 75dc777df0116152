"""Fleet 0012: the raw tables become partitioned by day on PostgreSQL, rows and ids kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from conftest import migrate


@pytest.mark.django_db(transaction=True)
def test_raw_rows_survive_partitioning_and_land_in_their_days_partition():
    old = migrate([("fleet", "0011_machine_state")])
    machine = old.get_model("fleet", "Machine").objects.create(name="gpu-01")
    ts = datetime.now(UTC) - timedelta(days=2)
    old.get_model("fleet", "SystemSample").objects.create(machine=machine, seq=1, ts=ts, interval_s=10, count=10)
    old.get_model("fleet", "GpuSample").objects.create(
        machine=machine, seq=1, gpu_index=0, ts=ts, interval_s=10, count=10, util_percent_mean=42.0
    )
    old.get_model("fleet", "ThroughputSample").objects.create(
        machine=machine, seq=1, source="report", ts=ts, interval_s=10, generated_tokens=7
    )

    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    from dashboard.fleet import partitions
    from dashboard.fleet.models import GpuSample, SystemSample, ThroughputSample

    assert GpuSample.objects.get(seq=1).util_percent_mean == 42.0
    assert SystemSample.objects.count() == 1 and ThroughputSample.objects.get().generated_tokens == 7
    new = SystemSample.objects.create(machine_id=machine.pk, seq=2, ts=ts, interval_s=10, count=10)
    assert new.pk > SystemSample.objects.get(seq=1).pk  # ids go on after the copied rows
    if connection.vendor == "postgresql":
        assert partitions.enabled()
        assert ts.date() in partitions.days("fleet_gpusample")
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM fleet_gpusample_p{ts:%Y%m%d}")
            assert cursor.fetchone()[0] == 1
