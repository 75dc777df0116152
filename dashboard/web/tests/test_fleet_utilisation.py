"""The fleet's utilisation over time (``/api/v1/fleet/history``): per step, every GPU's mean over the
step, then their mean and 95th percentile. On PostgreSQL it is one SQL statement, elsewhere Python:
both must give what this test works out by hand from the rollups."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from dashboard.core.stats import P95, percentile
from dashboard.fleet.models import GpuRollup, Machine
from dashboard.web.fleet_history import history, utilisation

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("span", "resolution", "step"),
    [
        (timedelta(days=26), 3600, 7200),  # hour rollups, 2-hour steps (dashboard/fleet/series.py)
        (timedelta(days=7), 3600, 3600),  # one bucket a step: the SQL path's shorter query
        (timedelta(hours=6), 60, 60),
    ],
    ids=["26d", "7d", "6h"],
)
def test_each_gpu_counts_once_per_step_then_mean_and_p95_across_the_fleet(span, resolution, step):
    rng = random.Random(13)
    since = datetime(2026, 11, 20, tzinfo=UTC)
    until = since + span
    per_device: dict[int, dict[tuple[int, int], list[float]]] = {}
    rows = []
    for n in range(3):
        m = Machine.objects.create(name=f"gpu-{n:02d}")
        for index in range(2):
            for b in range(int(span.total_seconds()) // resolution):
                if rng.random() < 0.2:
                    continue  # buckets without data: a device's step mean is over the ones it has
                bucket = since + timedelta(seconds=b * resolution)
                util = round(rng.uniform(0, 100), 2)
                rows.append(
                    GpuRollup(
                        machine=m,
                        gpu_index=index,
                        resolution_s=resolution,
                        bucket=bucket,
                        count=6,
                        util_percent_mean=util,
                    )
                )
                step_start = int(bucket.timestamp()) // step * step
                per_device.setdefault(step_start, {}).setdefault((m.pk, index), []).append(util)
    GpuRollup.objects.bulk_create(rows)
    # A row outside the range and one at the range's end (half-open) do not count.
    GpuRollup.objects.create(
        machine=m, gpu_index=0, resolution_s=resolution, bucket=until, count=1, util_percent_mean=0
    )

    got = utilisation(since, until)

    assert got["scope"] == "gpu" and got["step_s"] == step and got["unit"] == "%"
    starts = sorted(per_device)
    assert got["t"] == [(s + step // 2) * 1000 for s in starts]
    for i, start in enumerate(starts):
        values = [sum(v) / len(v) for v in per_device[start].values()]
        assert got["mean"][i] == pytest.approx(sum(values) / len(values), abs=0.0011)
        assert got["p95"][i] == pytest.approx(percentile(values, P95), abs=0.0011)


def test_the_history_is_shared_for_a_while_by_requests_for_the_same_range_and_machines():
    """The page asks again every 10 s in every open tab: the same range of the same machines is
    computed once per quarter step (at least 10 s), and another set of machines is its own entry."""
    until = datetime.now(UTC).replace(second=0, microsecond=0)
    since = until - timedelta(hours=1)
    a, b = Machine.objects.create(name="a"), Machine.objects.create(name="b")
    for m, util in ((a, 10.0), (b, 90.0)):
        GpuRollup.objects.create(machine=m, gpu_index=0, resolution_s=60, bucket=since, count=6, util_percent_mean=util)

    first = history(since, until, None, ("1h", None))
    GpuRollup.objects.filter(machine=b).update(util_percent_mean=50.0)
    assert history(since, until, None, ("1h", None)) == first  # within its 15 s
    assert first["utilisation"]["mean"] == [50.0]
    assert history(since, until, {a.pk}, ("1h", None))["utilisation"]["mean"] == [10.0]
    assert history(since, until, None, ("6h", None))["utilisation"]["mean"] == [30.0]  # another range: read now

    # Money per day is the last seven days for every range up to a week: one answer for 5 minutes.
    later = until + timedelta(minutes=1)
    six_hours = history(later - timedelta(hours=6), later, None, ("6h", None))
    assert six_hours["money"] == first["money"] and six_hours["money"]["until"] == until.isoformat()
    month = history(later - timedelta(days=30), later, None, ("30d", None))
    assert month["money"]["since"] == (later - timedelta(days=30)).isoformat()  # a range of its own
    assert first["money"]["unset"] == ["a", "b"]  # no cost profiles
    assert history(since, until, {a.pk}, ("1h", None))["money"]["unset"] == ["a"]  # machines of their own
