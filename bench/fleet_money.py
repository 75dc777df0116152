#!/usr/bin/env python3
"""The fleet page's money per day (``GET /api/v1/fleet/history``): every machine's RoI summed on each
request (before) against ``economics.fleet_days`` (bulk reads, past days cached), in the same run.

    .venv/bin/python bench/fleet_money.py [--machines 50,500] [--days 14] [--repeats 5] [--before-repeats 2]

1. Creates and migrates its own PostgreSQL database (hwdash_bench_fleet_money) and seeds machines of
   8 H100s each, in service for --days days, one cost profile for their assembly and global value
   rates, in SQL: an hour rollup per GPU and hour (a third without a power reading, so energy is
   estimated from utilisation), a token row per machine every 15 minutes, a training attempt per
   machine. Each fleet size adds machines to the last.
2. Times, in-process through Django's test client as a logged-in user, ``?since=7d`` (medians):
   before (``fleet_history.money_uncached``: ``machine_roi`` per machine, what the endpoint ran
   until now), after with an empty cache (every day read in bulk) and after with the cache warm
   (only the range's first, partial day and today read). The money part alone too, and the queries.
3. Checks that after equals before to the cent, and prints the largest difference.
Prints figures, asserts nothing; the database is dropped at the end, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_database, median, say, setup_django, table  # noqa: E402

DB_NAME = "hwdash_bench_fleet_money"
GPUS = 8
H100 = "NVIDIA H100 80GB HBM3"


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def seed(first: int, last: int, days: int) -> float:
    """Machines ``first``..``last - 1`` with ``days`` days of hour rollups, tokens and an attempt."""
    from decimal import Decimal

    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from dashboard.economics.hardware import assembly_key
    from dashboard.economics.models import CostProfile, ValueRates
    from dashboard.fleet import partitions
    from dashboard.fleet.models import Accelerator, GpuRollup, Machine, ThroughputSample
    from dashboard.jobs.models import Job, JobAttempt

    t0 = time.perf_counter()
    now = timezone.now()
    created = (now - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
    machines = Machine.objects.bulk_create(
        Machine(name=f"gpu-{i:05d}", mem_total_bytes=2048 * 2**30, created_at=created) for i in range(first, last)
    )
    Accelerator.objects.bulk_create(
        Accelerator(
            machine=m, index=g, vendor="nvidia", name=H100, uuid=f"{m.name}-{g}", mem_total_bytes=85520809984,
            power_limit_watts=700.0,
        )
        for m in machines
        for g in range(GPUS)
    )  # fmt: skip
    if not CostProfile.objects.exists():
        CostProfile.objects.create(
            name="H100 x8",
            assembly=assembly_key(machines[0], list(machines[0].accelerators.all())),
            purchase_price=Decimal("280000"),
            electricity_price_per_kwh=Decimal("0.21"),
            pue=1.3,
            host_power_watts=900,
            fixed_monthly=Decimal("1200"),
        )
        ValueRates.objects.create(
            currency="USD", serve_per_million_generated=Decimal("0.6"), train_per_gpu_hour=Decimal("2.1")
        )
    owner = get_user_model().objects.get_or_create(username="bench-owner")[0]
    for m in machines:
        job = Job.objects.create(
            name="train", kind="train", owner=owner, machine=m, assigned_gpus=[0, 1], argv=["true"], status="running"
        )
        JobAttempt.objects.create(job=job, number=1, machine=m, gpus=[0, 1], started_at=now - timedelta(days=2))
    if partitions.enabled():
        partitions.ensure(now, since=created.date())
    hours = days * 24
    params = {"start": created, "lo": machines[0].pk, "hi": machines[-1].pk}
    with connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO {GpuRollup._meta.db_table} (machine_id, gpu_index, resolution_s, bucket, count, "
            "util_percent_mean, power_watts_mean) "
            "SELECT m, g, 3600, %(start)s + make_interval(hours => h), 3600, 50 + 45 * sin(h / 5.0 + m + g), "
            "CASE WHEN (m + g) %% 3 = 0 THEN NULL ELSE 200 + 400 * abs(sin(h / 7.0 + g)) END "
            f"FROM generate_series(%(lo)s, %(hi)s) m, generate_series(0, {GPUS - 1}) g, "
            f"generate_series(0, {hours - 1}) h",
            params,
        )
        cur.execute(
            f"INSERT INTO {ThroughputSample._meta.db_table} (machine_id, seq, job_key, source, ts, interval_s, "
            "prompt_tokens, generated_tokens, train_tokens, received_at) "
            "SELECT m, q, 0, 'progress', %(start)s + make_interval(mins => 15 * q) + interval '7 seconds', 900, "
            "0, (400000 + 300000 * sin(q / 11.0 + m))::bigint, 0, now() "
            f"FROM generate_series(%(lo)s, %(hi)s) m, generate_series(1, {hours * 4 - 1}) q",
            params,
        )
        cur.execute(f"ANALYZE {GpuRollup._meta.db_table}, {ThroughputSample._meta.db_table}")
    return time.perf_counter() - t0


def timed_requests(client, n: int) -> tuple[float, int, float]:
    """Median ms of ``n`` requests, and the queries and their summed ms of the last one."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times = []
    for _ in range(n):
        with CaptureQueriesContext(connection) as queries:
            t0 = time.perf_counter()
            response = client.get("/api/v1/fleet/history", {"since": "7d"})
            times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.content[:300]
    return median(times), len(queries), sum(float(q["time"]) for q in queries.captured_queries) * 1000


def largest_difference(before: dict, after: dict) -> float:
    assert [d["t"] for d in before["days"]] == [d["t"] for d in after["days"]]
    worst = 0.0
    for a, b in zip(before["days"], after["days"], strict=True):
        for key in ("cost", "value"):
            assert (a[key] is None) == (b[key] is None)
            if a[key] is not None:
                worst = max(worst, abs(a[key] - b[key]))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", default="50,500", help="fleet sizes, comma-separated, increasing")
    parser.add_argument("--days", type=int, default=14, help="days each machine has been in service")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before-repeats", type=int, default=2)
    parser.add_argument("--database", default=DB_NAME)
    args = parser.parse_args()
    sizes = [int(n) for n in args.machines.split(",")]
    signal.signal(signal.SIGTERM, _sigterm)

    with bench_database(args.database) as url:
        setup_django(url)
        from django.contrib.auth import get_user_model
        from django.core.cache import cache
        from django.test import Client
        from django.utils import timezone

        from dashboard.web import fleet_history

        client = Client()
        client.force_login(get_user_model().objects.create_user("bench", password="x"))
        after_money = fleet_history.money
        rows = []
        seeded = 0
        for n in sizes:
            say(f"seeding machines {seeded}..{n - 1} ({args.days} days each)")
            say(f"  seeded in {seed(seeded, n, args.days):.1f} s")
            seeded = n
            now = timezone.now()
            since = now - timedelta(days=7)
            cache.clear()
            t0 = time.perf_counter()
            before = fleet_history.money_uncached(since, now, now)
            before_money_ms = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            after = fleet_history.money(since, now, now)
            cold_money_ms = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            fleet_history.money(since, now, now)
            warm_money_ms = (time.perf_counter() - t0) * 1000
            worst = largest_difference(before, after)

            def uncached(since, until, now=None, machine_ids=None):
                # The API passes the machines the user sees (here all of them); the old code had no such filter.
                return fleet_history.money_uncached(since, until, now)

            fleet_history.money = uncached
            try:
                before_ms, before_q, before_sql = timed_requests(client, args.before_repeats)
            finally:
                fleet_history.money = after_money
            cold = []
            for _ in range(args.repeats):
                cache.clear()
                cold.append(timed_requests(client, 1))
            warm_ms, warm_q, warm_sql = timed_requests(client, args.repeats)
            cold_ms = median([c[0] for c in cold])
            rows.append(
                [
                    f"{n:,}",
                    f"{before_ms:,.0f} ({before_q:,} q)",
                    f"{cold_ms:,.0f} ({cold[-1][1]} q)",
                    f"{warm_ms:,.0f} ({warm_q} q)",
                    f"{before_ms / warm_ms:.1f}x",
                    f"{before_money_ms:,.0f} / {cold_money_ms:,.0f} / {warm_money_ms:,.0f}",
                    f"{worst:.2g}",
                ]
            )
            say(f"  {n} machines: before {before_ms:.0f} ms, cold {cold_ms:.0f} ms, warm {warm_ms:.0f} ms")
        print()
        header = [
            "machines",
            "before ms/request",
            "after, cache empty",
            "after, cache warm",
            "before/warm",
            "money() alone ms: before / empty / warm",
            "largest difference",
        ]
        print()
        print(table(rows, header))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
