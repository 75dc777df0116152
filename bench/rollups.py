"""Rollups in steady state: one catch_up() run after 30 s of new windows, this code against another.

1. Its own database (``hwdash_bench_rollups``); --machines machines x 8 GPUs with --history-minutes of
   10 s windows up to 30 s ago, seeded in SQL with ``received_at`` = the window's stamp (as if each
   arrived when it was made), then one catch_up() over all of it (timed: the first run).
2. The next 30 s of windows for every machine, received now: what a beat tick finds.
3. catch_up() on that state, median of --repeats, the watermarks reset before each run: the rollups
   of this checkout (minute buckets only; and with the hour in progress refreshed, which happens
   every HOUR_REFRESH), and the rollups of --before (a file, e.g. an older rollup.py written out by
   ``git show COMMIT:dashboard/fleet/rollup.py``) on the same rows.

The share of a 30 s beat period each run takes is what issue 13 bounds (<= 20 %).

    .venv/bin/python bench/rollups.py --machines 2000 --before /tmp/rollup_before.py
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_database, median, say, setup_django, table  # noqa: E402

DB_NAME = "hwdash_bench_rollups"
GPUS = 8
STEP_S = 10


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def seed(machine_ids: list[int], lo: datetime, hi: datetime) -> int:
    """Windows ending every 10 s in (lo, hi] for every machine, received when they end; returns windows."""
    from django.db import connection, transaction

    windows = (
        "SELECT m, n, %(lo)s::timestamptz + make_interval(secs => n * 10) AS ts "
        "FROM unnest(%(ids)s::bigint[]) AS m, generate_series(1, %(n)s) AS n"
    )
    params = {"lo": lo, "ids": machine_ids, "n": int((hi - lo).total_seconds()) // STEP_S, "seq0": int(lo.timestamp())}
    gauge = "{c}_min, {c}_mean, {c}_max"
    values = "v - 5, v, v + 5"
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO fleet_systemsample (machine_id, seq, ts, interval_s, count, received_at, "
            f"{gauge.format(c='cpu_percent')}) SELECT m, %(seq0)s + n, ts, 10, 10, ts, {values} "
            f"FROM (SELECT *, 10 + 80 * random() AS v FROM ({windows}) w) x",
            params,
        )
        cur.execute(
            f"INSERT INTO fleet_gpusample (machine_id, seq, gpu_index, ts, interval_s, count, received_at, "
            f"{gauge.format(c='util_percent')}, {gauge.format(c='power_watts')}, {gauge.format(c='temp_c')}) "
            f"SELECT m, %(seq0)s + n, g, ts, 10, 10, ts, {values}, 300 + v, 305 + v, 310 + v, 40 + v / 4, 41 + v / 4, "
            f"42 + v / 4 FROM (SELECT *, 10 + 80 * random() AS v FROM ({windows}) w "
            f"CROSS JOIN generate_series(0, {GPUS - 1}) AS g) x",
            params,
        )
        return cur.rowcount // GPUS


def load_before(path: Path):
    """Another rollup.py as a module of the fleet package (its relative imports resolve here)."""
    spec = importlib.util.spec_from_file_location("dashboard.fleet._rollup_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, default=2000, help="machines (default 2000)")
    parser.add_argument("--history-minutes", type=int, default=10, help="windows already rolled up (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case, median taken (default 3)")
    parser.add_argument("--before", type=Path, help="another rollup.py to compare with, on the same rows")
    parser.add_argument("--sql", action="store_true", help="print the slowest SQL of one run of each case")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        with bench_database(DB_NAME) as url:
            setup_django(url)
            from django.db import connection

            from dashboard.fleet import rollup
            from dashboard.fleet.models import Machine, RollupState

            ids = [m.pk for m in Machine.objects.bulk_create(Machine(name=f"r-{i:05d}") for i in range(args.machines))]
            # Whole seconds in the middle of an hour, so the runs never cross an hour's end.
            now = datetime.now(UTC).replace(microsecond=0)
            if now.minute < args.history_minutes + 2 or now.minute > 57:
                now = now.replace(minute=max(args.history_minutes + 2, min(now.minute, 57)))
            tick = now - timedelta(seconds=30)
            t0 = time.perf_counter()
            seeded = seed(ids, tick - timedelta(minutes=args.history_minutes), tick)
            say(f"seeded {seeded:,} windows x (1 + {GPUS} rows) in {time.perf_counter() - t0:.1f} s")
            with connection.cursor() as cur:
                cur.execute("ANALYZE fleet_systemsample, fleet_gpusample")
            t0 = time.perf_counter()
            rollup.catch_up(now=tick)
            first = time.perf_counter() - t0
            say(f"first catch_up over the history: {first:.1f} s")
            new = seed(ids, tick, now)
            say(f"then {new:,} new windows (30 s of the fleet) received by {now:%H:%M:%S}")

            def run(catch_up, hours_due: bool) -> float:
                RollupState.objects.all().delete()
                marks = {"rollup": tick, "rollup-hours-closed": rollup.floor_to(now, rollup.HOUR)}
                marks["rollup-hours"] = tick - (rollup.HOUR_REFRESH if hours_due else timedelta(seconds=30))
                for name, at in marks.items():
                    RollupState.objects.create(name=name, watermark=at)
                t = time.perf_counter()
                catch_up(now=now)
                return time.perf_counter() - t

            cases = [("this checkout, minutes only", lambda: run(rollup.catch_up, False))]
            cases.append(("this checkout, open hour refreshed too (every 5 min)", lambda: run(rollup.catch_up, True)))
            if args.before:
                before = load_before(args.before)
                cases.append((f"before ({args.before.name})", lambda: run(before.catch_up, True)))
            results = {}
            if args.sql:
                for name, case in cases:
                    queries: list[tuple[float, str]] = []

                    def timing(execute, sql, params, many, context):
                        t = time.perf_counter()
                        try:
                            return execute(sql, params, many, context)
                        finally:
                            queries.append((time.perf_counter() - t, sql))

                    with connection.execute_wrapper(timing):
                        case()
                    print(f"{name}: {len(queries)} queries, {sum(q for q, _ in queries):.2f} s of SQL; slowest:")
                    for q, sql in sorted(queries, reverse=True)[:4]:
                        print(f"  {q:.2f} s  {sql[:160]}")
            for _ in range(args.repeats):  # interleaved, so load from other users spreads evenly
                for name, case in cases:
                    results.setdefault(name, []).append(case())
        base = median(results[cases[0][0]])
        print()
        print(
            f"Rollups, one beat tick: {args.machines:,} machines x {GPUS} GPUs, 30 s of new windows "
            f"({new:,} windows, {new * (1 + GPUS):,} rows) on {args.history_minutes} min of history; median of {args.repeats}"
        )
        print(
            table(
                [
                    [
                        name,
                        f"{median(v):.2f}",
                        f"{median(v) / 30:.0%}",
                        f"{median(v) / base:.1f}x",
                        ", ".join(f"{x:.2f}" for x in v),
                    ]
                    for name, v in results.items()
                ],
                ["catch_up()", "s", "of a 30 s period", "vs first row", "runs"],
            )
        )
        print(f"first catch_up over the whole history: {first:.1f} s")
        return 0
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        return 130


if __name__ == "__main__":
    sys.exit(main())
