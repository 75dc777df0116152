"""Fleet 0014: the system rollups' GPU mean, filled for the last two hours of minute buckets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from conftest import migrate


@pytest.mark.django_db(transaction=True)
def test_recent_minute_buckets_get_their_gpus_mean():
    old = migrate([("fleet", "0013_throughput_token_kind_indexes")])
    machine = old.get_model("fleet", "Machine").objects.create(name="gpu-01")
    system, gpu = old.get_model("fleet", "SystemRollup"), old.get_model("fleet", "GpuRollup")
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    buckets = {"recent": (60, minute), "old": (60, minute - timedelta(hours=3)), "hour": (3600, minute)}
    for resolution, bucket in buckets.values():
        system.objects.create(machine=machine, resolution_s=resolution, bucket=bucket, count=6)
        for index, util in enumerate((20.0, 50.0)):
            gpu.objects.create(
                machine=machine,
                gpu_index=index,
                resolution_s=resolution,
                bucket=bucket,
                count=6,
                util_percent_mean=util,
            )

    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    from dashboard.fleet.models import SystemRollup

    means = {
        name: SystemRollup.objects.get(resolution_s=resolution, bucket=bucket).gpu_util_percent_mean
        for name, (resolution, bucket) in buckets.items()
    }
    assert means == {"recent": pytest.approx(35.0), "old": None, "hour": None}
