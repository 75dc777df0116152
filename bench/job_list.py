#!/usr/bin/env python3
"""The jobs list's throughput column with long-running jobs: summaries in SQL against the rule in Python.

    .venv/bin/python bench/job_list.py [--jobs 50] [--hours 24] [--repeats 5]

1. Creates and migrates its own PostgreSQL database (hwdash_bench_job_list) and seeds --jobs
   serving jobs on one machine, each with --hours of 10 s token windows (generate_series; 50 jobs
   x 24 h = 432,000 rows); every tenth window is also counted by a second source (the job's output
   beside its engine's metrics), with its own active seconds, so the best-source rule has work.
2. Times (medians of --repeats) ``fleet.throughput.summaries`` for all the jobs (what the list
   computes when its 30 s cache is cold), the list page itself (``GET /jobs/``, test client) cold
   and warm, one job's ``job_summary``, and, as
   the baseline in the same run, the same figures computed the way they were before: every window
   read into Python (``window_tokens``) and summarised there (mean, median, peak, active seconds).
3. Checks both give the same figures for every job and kind, and prints the largest difference.
Prints figures, asserts nothing; the database is dropped at the end, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_database, median, say, setup_django, table, timed  # noqa: E402

DB_NAME = "hwdash_bench_job_list"


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def seed(jobs: int, hours: int) -> list[int]:
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from dashboard.fleet.models import Machine, ThroughputSample
    from dashboard.jobs.models import Job, JobAttempt

    owner = get_user_model().objects.create_superuser("bench", "", "bench-pass")
    machine = Machine.objects.create(name="serve-01")
    now = timezone.now()
    ids = []
    for i in range(jobs):
        job = Job.objects.create(
            owner=owner, name=f"serve-{i}", kind="serve", argv=["x"], gpus=1, machine=machine,
            status="running", started_at=now - timedelta(hours=hours), attempt=1,
        )  # fmt: skip
        JobAttempt.objects.create(job=job, number=1, machine=machine, gpus=[0], started_at=job.started_at)
        ids.append(job.pk)
    table_name = ThroughputSample._meta.db_table
    columns = "machine_id, seq, job_key, source, ts, interval_s, prompt_tokens, generated_tokens, train_tokens, active_s, received_at"
    with connection.cursor() as cursor:
        for job_id in ids:
            cursor.execute(
                f"INSERT INTO {table_name} ({columns}) "
                "SELECT %(m)s, w, %(j)s, 'prometheus', %(now)s - w * interval '10 seconds', 10, 500 + w %% 13, "
                "1000 + (w * %(j)s) %% 97, 0, NULL, %(now)s FROM generate_series(1, %(n)s) w",
                {"m": machine.pk, "j": job_id, "now": now, "n": hours * 360},
            )
            cursor.execute(  # the job's own output counts every tenth window too, a little more, in 9.5 s
                f"INSERT INTO {table_name} ({columns}) "
                "SELECT %(m)s, w, %(j)s, 'progress', %(now)s - w * interval '10 seconds', 10, 0, "
                "1100 + w %% 7, 0, 9.5, %(now)s FROM generate_series(10, %(n)s, 10) w",
                {"m": machine.pk, "j": job_id, "now": now, "n": hours * 360},
            )
        cursor.execute(f"ANALYZE {table_name}")
    return ids


def python_summaries(job_ids: list[int]) -> dict[int, dict]:
    """The baseline: each window into Python, the figures computed there, as the code before did."""
    from dashboard.fleet import throughput
    from dashboard.jobs.throughput import rows_of

    by_job: dict[int, list] = {}
    for w in throughput.window_tokens(rows_of(job_ids)):
        by_job.setdefault(w.job_key, []).append(w)
    out = {}
    for job_id, windows in by_job.items():
        out[job_id] = {}
        for kind in throughput.KINDS:
            counted = [(w.count(kind), w.seconds(kind)) for w in windows if w.count(kind)]
            rates = [n / s for n, s in counted]
            total = sum(n for n, _ in counted)
            active = sum(s for _, s in counted)
            out[job_id][kind] = (
                {
                    "total_tokens": total,
                    "mean_tokens_per_s": round(total / active, 3),
                    "median_tokens_per_s": round(statistics.median(rates), 3),
                    "peak_tokens_per_s": round(max(rates), 3),
                    "active_s": round(active, 3),
                }
                if rates
                else None
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50, help="serving jobs (default 50)")
    parser.add_argument("--hours", type=int, default=24, help="hours of 10 s windows per job (default 24)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (default 5)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)
    with bench_database(DB_NAME) as url:
        setup_django(url)
        from django.test import Client

        from dashboard.jobs import throughput as job_throughput
        from dashboard.jobs.models import Job

        ids = seed(args.jobs, args.hours)
        rows = args.jobs * args.hours * 396
        say(f"seeded {args.jobs} jobs x {args.hours} h: about {rows:,} token rows")
        client = Client()
        client.force_login(Job.objects.first().owner)
        one = Job.objects.get(pk=ids[0])

        from django.core.cache import cache

        from dashboard.fleet import throughput

        def uncached_list():
            cache.clear()  # the list caches its summaries for 30 s: time what a refresh computes
            return client.get("/jobs/")

        cases = [
            ("summaries of every job (SQL)", lambda: throughput.summaries(job_throughput.rows_of(ids), "job_key")),
            ("baseline: every window into Python", lambda: python_summaries(ids)),
            ("GET /jobs/ (the list, 200 jobs at most), uncached", uncached_list),
            ("GET /jobs/ within 30 s of the last (cached summaries)", lambda: client.get("/jobs/")),
            ("job_summary, one job (its page)", lambda: job_throughput.job_summary(one)),
            ("baseline: one job's windows into Python", lambda: python_summaries(ids[:1])),
        ]
        results = []
        for name, fn in cases:
            fn()  # warm
            results.append([name, f"{median(timed(fn, args.repeats)) * 1000:,.0f}"])
            say(f"{name}: {results[-1][1]} ms")

        sql, python = throughput.summaries(job_throughput.rows_of(ids), "job_key"), python_summaries(ids)
        worst, compared = 0.0, 0
        for job_id, kinds in python.items():
            for kind, figures in kinds.items():
                got = sql[job_id][kind]
                if figures is None:
                    worst = max(worst, float(got["total_tokens"]))
                    continue
                for key, value in figures.items():
                    worst = max(worst, abs(got[key] - value))
                    compared += 1
        print()
        print(table(results, ["case", "ms (median)"]))
        ratio = float(results[1][1].replace(",", "")) / float(results[0][1].replace(",", ""))
        print(
            f"\nSQL vs Python for every job: {ratio:.1f}x faster; {compared} figures compared, largest difference {worst}"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
