#!/usr/bin/env python3
"""The alert evaluation's cost with a large fleet: one beat run of every default rule.

    .venv/bin/python bench/alerts.py [--machines 750] [--runs 3] [--gc tuned|default]

1. Creates and migrates its own PostgreSQL database (hwdash_bench_alerts), which loads the default
   rules (alerts 0003: ghost memory and the GPU health rules; 0005: offline and losing samples),
   and seeds --machines machines with 8 GPUs each as bench/fleet_page.py does (a ``latest``
   document with a process per GPU that belongs to no job, so the ghost rule tracks 8 processes
   per machine; 2 % offline, 1 % never reported).
2. Times ``evaluate()`` (dashboard/alerts/evaluate.py): the first run (it creates each GPU's
   watches and the tracked processes) and the median of --runs more; then the fleet read the
   rules share (``findings.Fleet``) alone, and each rule's check alone with that read done.

Before/after: run it on two checkouts in turn with BENCH_ROOT (bench/README.md). Prints figures,
asserts nothing; the database is dropped at the end, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, bench_database, median, say, setup_django, table  # noqa: E402

DB_NAME = "hwdash_bench_alerts"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, default=750)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--gc",
        choices=["tuned", "default"],
        default="tuned",
        help="the garbage collector as a Celery worker sets it (dashboard.core.process), or Python's default",
    )
    args = parser.parse_args()
    with bench_database(DB_NAME) as url:
        setup_django(url)
        from datetime import timedelta

        from django.db import connection, transaction
        from django.test.utils import CaptureQueriesContext
        from django.utils import timezone

        from bench.fleet_page import seed

        seeded_at = timezone.now()
        seed(args.machines)

        from dashboard.alerts.evaluate import CHECKS, evaluate
        from dashboard.alerts.findings import Fleet
        from dashboard.alerts.models import AlertRule
        from dashboard.fleet.models import MachineState

        if args.gc == "tuned":
            from dashboard.core.process import tune_gc  # BENCH_ROOT from before it: --gc default

            tune_gc()  # as the Celery worker does once it has loaded the project

        # The seed's online machines were seen up to 10 s before it started (its offline ones 5 min
        # or more): measured from its start, not from now, since seeding 3,000 machines takes a while.
        online = list(
            MachineState.objects.filter(last_seen_at__gte=seeded_at - timedelta(seconds=11)).values_list(
                "pk", flat=True
            )
        )
        say(f"{len(online)} of {args.machines} machines online")

        def fresh() -> None:
            """The machines seeded online stay online however long the runs take."""
            MachineState.objects.filter(pk__in=online).update(last_seen_at=timezone.now())

        say(
            f"project: {ROOT}; {args.machines} machines x 8 GPUs; rules: {AlertRule.objects.filter(enabled=True).count()}"
        )
        fresh()
        t = time.perf_counter()
        evaluate()
        first = time.perf_counter() - t
        steady = []
        for _ in range(args.runs):
            fresh()
            t = time.perf_counter()
            evaluate()
            steady.append(time.perf_counter() - t)
        rows = [
            ["evaluate(), first run", f"{first * 1000:,.0f}", ""],
            ["evaluate(), later runs (median)", f"{median(steady) * 1000:,.0f}", ""],
        ]
        # The read the rules share (findings.Fleet), timed alone; each rule is then timed with it read.
        fresh()
        fleet = Fleet()
        with CaptureQueriesContext(connection) as queries:
            t = time.perf_counter()
            for m in fleet.machines(AlertRule(), reported=True):
                fleet.gpu_rows(m)
                fleet.gpu_rows(m, physical_only=False)
            took = time.perf_counter() - t
        rows.append(["  the fleet read every rule shares", f"{took * 1000:,.0f}", f"{len(queries)}"])
        for rule in AlertRule.objects.filter(enabled=True).order_by("kind"):
            fresh()
            with transaction.atomic(), CaptureQueriesContext(connection) as queries:
                t = time.perf_counter()
                CHECKS[rule.kind](rule, timezone.now(), fleet)
                took = time.perf_counter() - t
            rows.append([f"  {rule.kind}", f"{took * 1000:,.0f}", f"{len(queries)}"])
        print()
        print(table(rows, ["what", "ms", "queries"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
