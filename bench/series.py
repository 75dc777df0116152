#!/usr/bin/env python3
"""The machine page's data cost: series from rollups against the same aggregation from raw rows.

    .venv/bin/python bench/series.py [--days 7] [--repeats 20]

1. Creates and migrates its own PostgreSQL database (hwdash_bench_series) and seeds one machine
   with 8 GPUs and --days of 10 s windows in SQL (generate_series; 7 days = 60,480 system rows and
   483,840 GPU rows), then ANALYZE.
2. Times rollup.catch_up() building the minute and hour rollups for all of it.
3. Times series.machine_series() (medians of --repeats) for gpu.util_percent and
   system.cpu_percent over 1 h (raw rows), 24 h (minute rollups) and 7 d (hour rollups), and,
   as the baseline in the same run, the same 7 days aggregated to hours straight from the raw
   tables in SQL, and machine_series() itself made to read raw rows (what the page would cost
   without rollups).
4. Prints EXPLAIN (ANALYZE, BUFFERS) of the 7-day rollup query machine_series() ran.
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

from bench.common import ROOT, bench_database, median, say, setup_django, table, timed  # noqa: E402

DB_NAME = "hwdash_bench_series"
GPUS = 8
WINDOW_S = 10


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def _gauge_sql(base: str, percent: bool, spread: str) -> list[str]:
    lo = f"greatest(0, {base} - {spread})"
    hi = f"least(100, {base} + {spread})" if percent else f"{base} + {spread}"
    return [lo, base, hi]


# Per-metric value expressions in SQL; t is seconds since the start, g the GPU index.
SYSTEM_VALUES = {
    "cpu_percent": ("40 + 30 * sin(t / 3600.0)", True, "5"),
    "load1": ("8 + 4 * sin(t / 1800.0)", False, "0.5"),
    "mem_used_bytes": ("64e9 + 8e9 * sin(t / 7200.0)", False, "1e8"),
    "swap_used_bytes": ("0", False, "0"),
    "disk_read_bytes_per_s": ("1e6 + 5e5 * sin(t / 600.0)", False, "1e5"),
    "disk_write_bytes_per_s": ("2e6 + 1e6 * sin(t / 900.0)", False, "1e5"),
    "net_rx_bytes_per_s": ("5e8 + 4e8 * sin(t / 300.0)", False, "1e7"),
    "net_tx_bytes_per_s": ("4e8 + 3e8 * sin(t / 300.0)", False, "1e7"),
}
SYSTEM_LAST = {"mem_total_bytes": str(256 * 2**30), "swap_total_bytes": "0"}
GPU_VALUES = {
    "util_percent": ("50 + 45 * sin(t / 3600.0 + g)", True, "10"),
    "mem_util_percent": ("30 + 25 * sin(t / 3600.0 + g)", True, "5"),
    "mem_used_bytes": ("40e9 + 30e9 * sin(t / 7200.0 + g)", False, "1e8"),
    "power_watts": ("400 + 250 * sin(t / 3600.0 + g)", False, "20"),
    "temp_c": ("60 + 15 * sin(t / 3600.0 + g)", False, "2"),
    "sm_clock_mhz": ("1980", False, "0"),
    "mem_clock_mhz": ("2619", False, "0"),
}
GPU_LAST = {
    "mem_total_bytes": "85520809984",
    "power_limit_watts": "700.0",
    "throttle_reasons": "0",
    "ecc_errors": "0",
    "xid_errors": "0",
}


def _select_list(metrics, values: dict, last: dict) -> tuple[list[str], list[str]]:
    """Column names and SQL expressions for every metric column (unknown gauges stay NULL)."""
    from dashboard.fleet.models import metric_columns

    cols, exprs = [], []
    for metric in metrics:
        names = metric_columns(metric)
        if metric.kind == "gauge":
            if metric.name in values:
                exprs.extend(_gauge_sql(*values[metric.name]))
            else:
                exprs.extend(["NULL"] * 3)  # e.g. Apple-only memory figures
        else:
            exprs.append(last.get(metric.name, "NULL"))
        cols.extend(names)
    return cols, exprs


def seed(machine_id: int, days: int) -> dict:
    """Windows ending every 10 s over ``days`` up to now, in SQL; returns counts and seconds."""
    from django.db import connection, transaction

    from dashboard.fleet.models import GpuSample, SystemSample
    from hwprobe.schema import GPU_METRICS, SYSTEM_METRICS

    windows = days * 86400 // WINDOW_S
    sys_cols, sys_exprs = _select_list(SYSTEM_METRICS, SYSTEM_VALUES, SYSTEM_LAST)
    gpu_cols, gpu_exprs = _select_list(GPU_METRICS, GPU_VALUES, GPU_LAST)
    # w.n = 1..windows: seq n, window end = start + n * 10 s, t = seconds since the start.
    windows_sql = (
        "SELECT n, now() - make_interval(secs => %(total)s) + make_interval(secs => n * %(step)s) AS ts, "
        "(n * %(step)s)::float8 AS t FROM generate_series(1, %(windows)s) AS n"
    )
    params = {"total": windows * WINDOW_S, "step": WINDOW_S, "windows": windows, "machine": machine_id}
    t0 = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO {SystemSample._meta.db_table} (machine_id, seq, ts, interval_s, count, received_at, {', '.join(sys_cols)}) "
            f"SELECT %(machine)s, n, ts, 10.0, 10, now(), {', '.join(sys_exprs)} FROM ({windows_sql}) AS w",
            params,
        )
        cur.execute(
            f"INSERT INTO {GpuSample._meta.db_table} (machine_id, seq, gpu_index, ts, interval_s, count, received_at, {', '.join(gpu_cols)}) "
            f"SELECT %(machine)s, n, g, ts, 10.0, 10, now(), {', '.join(gpu_exprs)} "
            f"FROM ({windows_sql}) AS w CROSS JOIN generate_series(0, {GPUS - 1}) AS g",
            params,
        )
    seconds = time.perf_counter() - t0
    with connection.cursor() as cur:
        cur.execute(f"ANALYZE {SystemSample._meta.db_table}, {GpuSample._meta.db_table}")
    return {"windows": windows, "system_rows": windows, "gpu_rows": windows * GPUS, "seconds": seconds}


def raw_aggregate(machine_id: int, scope: str, column: str, since, until, step: int) -> list:
    """The 7-day chart straight from raw rows: min/mean/max per step (and GPU) in SQL."""
    from django.db import connection

    from dashboard.fleet.models import GpuSample, SystemSample

    table_name = (GpuSample if scope == "gpu" else SystemSample)._meta.db_table
    key = "gpu_index, " if scope == "gpu" else ""
    sql = (
        f"SELECT {key}floor(extract(epoch FROM ts) / %s) AS b, "
        f"min({column}_min), avg({column}_mean), max({column}_max) FROM {table_name} "
        f"WHERE machine_id = %s AND ts >= %s AND ts < %s GROUP BY {key}b ORDER BY {key}b"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [step, machine_id, since, until])
        return cur.fetchall()


def explain_rollup_query(machine, since, until) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the query machine_series() ran for the 7-day GPU chart."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from dashboard.fleet import series
    from dashboard.fleet.models import GpuRollup

    with CaptureQueriesContext(connection) as captured:
        series.machine_series(machine, "gpu.util_percent", since, until)
    table_name = GpuRollup._meta.db_table
    sql = next(q["sql"] for q in captured.captured_queries if f'FROM "{table_name}"' in q["sql"])
    with connection.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
        plan = "\n".join(r[0] for r in cur.fetchall())
    return f"{sql}\n\n{plan}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=7, help="days of 10 s windows to seed (default 7)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per rollup-backed case (default 20)")
    parser.add_argument("--raw-repeats", type=int, default=3, help="timed calls per raw-table baseline (default 3)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)

    try:
        with bench_database(DB_NAME) as url:
            setup_django(url)
            say(f"project: {ROOT}")
            from django.db import connection
            from django.utils import timezone

            from dashboard.fleet import rollup, series
            from dashboard.fleet.models import Accelerator, GpuRollup, Machine, SystemRollup

            machine = Machine.objects.create(name="bench-series")
            for i in range(GPUS):
                Accelerator.objects.create(machine=machine, index=i, vendor="nvidia", name="NVIDIA H100 80GB HBM3")
            seeded = seed(machine.pk, args.days)
            say(
                f"seeded {seeded['system_rows']:,} system + {seeded['gpu_rows']:,} GPU rows in {seeded['seconds']:.1f} s"
            )

            t0 = time.perf_counter()
            written = rollup.catch_up()
            catch_up_s = time.perf_counter() - t0
            with connection.cursor() as cur:
                cur.execute(f"ANALYZE {SystemRollup._meta.db_table}, {GpuRollup._meta.db_table}")
            say(f"catch_up() wrote {written:,} rollup rows in {catch_up_s:.1f} s")

            now = timezone.now()
            week = now - timedelta(days=args.days)
            results = []  # (case, metric, resolution, points, ms)
            for metric in ("gpu.util_percent", "system.cpu_percent"):
                for label, since in (
                    ("1 h", now - timedelta(hours=1)),
                    ("24 h", now - timedelta(hours=24)),
                    (f"{args.days} d", week),
                ):
                    out = series.machine_series(machine, metric, since, now)  # warm-up, and the shape
                    points = sum(len(s["t"]) for s in out["series"])
                    ms = median(timed(lambda: series.machine_series(machine, metric, since, now), args.repeats)) * 1000
                    res = {None: "raw", 60: "1 min", 3600: "1 h"}[out["resolution_s"]]
                    results.append([f"machine_series {label}", metric, res, points, ms, args.repeats])

            # Baselines, same run: the same 7 days without rollups.
            step = series.step_for(now - week, 3600)
            for metric, scope, column in (
                ("gpu.util_percent", "gpu", "util_percent"),
                ("system.cpu_percent", "system", "cpu_percent"),
            ):
                rows = raw_aggregate(machine.pk, scope, column, week, now, step)
                ms = (
                    median(timed(lambda: raw_aggregate(machine.pk, scope, column, week, now, step), args.raw_repeats))
                    * 1000
                )
                results.append(
                    [f"raw table, SQL GROUP BY {step} s, {args.days} d", metric, "raw", len(rows), ms, args.raw_repeats]
                )

                real = series.resolution_for
                series.resolution_for = lambda span: 0  # machine_series reading raw rows into Python
                try:
                    out = series.machine_series(machine, metric, week, now)
                    points = sum(len(s["t"]) for s in out["series"])
                    ms = (
                        median(timed(lambda: series.machine_series(machine, metric, week, now), args.raw_repeats))
                        * 1000
                    )
                finally:
                    series.resolution_for = real
                results.append(
                    [f"machine_series {args.days} d, forced raw", metric, "raw", points, ms, args.raw_repeats]
                )

            plan = explain_rollup_query(machine, week, now)

        by = {(r[0], r[1]): r[4] for r in results}
        rows = []
        for case, metric, res, points, ms, n in results:
            rollup_ms = by[(f"machine_series {args.days} d", metric)]
            ratio = f"{ms / rollup_ms:.1f}x" if "raw table" in case or "forced raw" in case else ""
            rows.append([case, metric, res, f"{points:,}", f"{ms:.1f}", n, ratio])
        print()
        print(
            f"One machine, {GPUS} GPUs, {args.days} days of {WINDOW_S} s windows "
            f"({seeded['system_rows']:,} system + {seeded['gpu_rows']:,} GPU rows); "
            f"seed {seeded['seconds']:.1f} s; catch_up() {catch_up_s:.1f} s for {written:,} rollup rows"
        )
        print(table(rows, ["case", "metric", "reads", "points", "ms (median)", "n", f"vs {args.days} d rollup"]))
        print()
        print(f"EXPLAIN (ANALYZE, BUFFERS) of the {args.days}-day GPU rollup query:")
        print(plan)
        return 0
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        return 130


if __name__ == "__main__":
    sys.exit(main())
