"""The fleet's utilisation over time (``/api/v1/fleet/history``): per step, every GPU's mean over the
step, then their mean and 95th percentile. On PostgreSQL it is one SQL statement, elsewhere Python:
both must give what this test works out by hand from the rollups."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from dashboard.core.stats import P95, percentile
from dashboard.fleet.models import GpuRollup, Machine
from dashboard.web.fleet_history import utilisation

pytestmark = pytest.mark.django_db


def test_each_gpu_counts_once_per_step_then_mean_and_p95_across_the_fleet():
    rng = random.Random(13)
    since = datetime(2026, 11, 20, tzinfo=UTC)
    until = since + timedelta(days=26)  # hour rollups, 2-hour steps (dashboard/fleet/series.py)
    per_device: dict[int, dict[tuple[int, int], list[float]]] = {}
    rows = []
    for n in range(3):
        m = Machine.objects.create(name=f"gpu-{n:02d}")
        for index in range(2):
            for h in range(26 * 24):
                if rng.random() < 0.2:
                    continue  # hours without data: a device's step mean is over the hours it has
                bucket = since + timedelta(hours=h)
                util = round(rng.uniform(0, 100), 2)
                rows.append(
                    GpuRollup(
                        machine=m, gpu_index=index, resolution_s=3600, bucket=bucket, count=360, util_percent_mean=util
                    )
                )
                step_start = int(bucket.timestamp()) // 7200 * 7200
                per_device.setdefault(step_start, {}).setdefault((m.pk, index), []).append(util)
    GpuRollup.objects.bulk_create(rows)
    # A row outside the range and one at the range's end (half-open) do not count.
    GpuRollup.objects.create(machine=m, gpu_index=0, resolution_s=3600, bucket=until, count=1, util_percent_mean=0)

    got = utilisation(since, until)

    assert got["scope"] == "gpu" and got["step_s"] == 7200 and got["unit"] == "%"
    starts = sorted(per_device)
    assert got["t"] == [(s + 3600) * 1000 for s in starts]
    for i, start in enumerate(starts):
        values = [sum(v) / len(v) for v in per_device[start].values()]
        assert got["mean"][i] == pytest.approx(sum(values) / len(values), abs=0.0011)
        assert got["p95"][i] == pytest.approx(percentile(values, P95), abs=0.0011)
