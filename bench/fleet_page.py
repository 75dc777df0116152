#!/usr/bin/env python3
"""The fleet page's server time with a large fleet: the paged page against the old whole-fleet page.

    .venv/bin/python bench/fleet_page.py [--machines 1000] [--repeats 20] [--before-repeats 5] [--history-hours 0]

1. Creates and migrates its own PostgreSQL database (hwdash_bench_fleet_page) and seeds --machines
   machines with 8 GPUs each (four models), each with a ``latest`` document shaped like ingest's
   (128 per-core CPU values, a process per GPU), its accelerators, an hour of minute rollups
   (system and GPU, generated in SQL, the system rows' GPU mean written by ``rollup.gpu_means``
   as the minute rollup does) and three hours of token rows; 2% of the machines are offline and 1%
   never reported.
2. Times, in-process through Django's test client as a logged-in user (medians of --repeats):
   the page, its 10 s partial refresh, a text + state filter with the busiest-first order, and
   the last page; then (medians of --before-repeats) the charts the page fetches: the fleet's
   tokens/s over 1 h and 3 h (token rows) and 24 h and 7 d (a day of token rollups, seeded in
   SQL as ingest writes them), and its utilisation and money over 1 h, 6 h and 24 h (the cache that
   shares those answers for a while is cleared before each). --history-hours keeps that many hours
   of minute rollups before the seeded one, as a fleet that has run a while does. Each case's SQL is captured once more: query count and summed query time.
3. Baseline in the same run (medians of --before-repeats): the old page, i.e. every machine from
   ``queries.fleet_overview()`` through ``views._present()`` into the card template as it was at
   --before-ref (read with git), and ``fleet_overview()`` alone.
Prints figures, asserts nothing; the database is dropped at the end, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, bench_database, median, say, setup_django, table, timed  # noqa: E402

DB_NAME = "hwdash_bench_fleet_page"
GPUS = 8
MODELS = ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB", "NVIDIA L40S")
GPU_MEM = 85520809984
BEFORE_REF = "7bc7547"  # the last commit with the whole-fleet page
# Three hours of 10 s windows of token counts per serving machine: the page only probes whether the
# range holds any (two index probes, fleet migration 0013), so a day (5.1 M rows, ~2 min) measured
# nothing more.
TOKEN_WINDOWS = 3 * 360


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def latest_document(rng: random.Random, ts: float, util: float) -> dict:
    """A ``latest`` as ingest stores it: every metric's mean or last value, per-core CPU, processes."""
    from hwprobe.schema import GPU_METRICS, SYSTEM_METRICS

    system = {m.name: None for m in SYSTEM_METRICS}
    system.update(
        cpu_percent=rng.uniform(5, 95),
        load1=rng.uniform(0, 64),
        mem_used_bytes=rng.uniform(20e9, 200e9),
        mem_total_bytes=256 * 2**30,
        swap_used_bytes=0.0,
        swap_total_bytes=0,
        disk_read_bytes_per_s=1e6,
        disk_write_bytes_per_s=2e6,
        net_rx_bytes_per_s=5e8,
        net_tx_bytes_per_s=4e8,
    )
    system["cpu_per_core_percent"] = [round(rng.uniform(0, 100), 1) for _ in range(128)]
    gpus = []
    for i in range(GPUS):
        gpu = {m.name: None for m in GPU_METRICS}
        u = max(0.0, min(100.0, rng.gauss(util, 10)))
        gpu.update(
            util_percent=u,
            mem_util_percent=u / 2,
            mem_used_bytes=rng.uniform(1e9, 80e9),
            power_watts=100 + 6 * u,
            temp_c=35 + u / 2,
            sm_clock_mhz=1980.0,
            mem_clock_mhz=2619.0,
            mem_total_bytes=GPU_MEM,
            power_limit_watts=700.0,
            throttle_reasons=0,
            ecc_errors=0,
            xid_errors=0,
        )
        gpus.append(
            {
                "index": i,
                "uuid": f"GPU-{i:08d}-bench",
                **gpu,
                "processes": [{"pid": 4242 + i, "name": "python3", "user": "alice", "mem_used_bytes": 40_000_000_000}],
            }
        )
    return {"seq": 1, "ts": ts, "system": system, "gpus": gpus}


def seed(machines: int, history_hours: int = 0) -> dict:
    """Machines, accelerators and an hour of minute rollups (plus ``history_hours`` before it);
    returns counts and seconds."""
    from django.db import connection, transaction
    from django.utils import timezone

    from dashboard.fleet.models import Accelerator, GpuRollup, Machine, MachineState, SystemRollup, ThroughputSample
    from dashboard.fleet.rollup import MINUTE, gpu_means

    rng = random.Random(7)
    now = timezone.now()
    t0 = time.perf_counter()
    rows = []
    for i in range(machines):
        roll = rng.random()
        if roll < 0.01:
            seen = None  # enrolled, agent never started
        elif roll < 0.03:
            seen = now - timedelta(minutes=rng.uniform(5, 600))
        else:
            seen = now - timedelta(seconds=rng.uniform(0, 10))
        util = rng.choice((2, 30, 60, 95))
        rows.append(
            Machine(
                name=f"gpu-{i:04d}",
                hostname=f"node{i:04d}.rack{i // 40:02d}.example",
                os="Linux 6.1.0",
                cpu_model="AMD EPYC 7763 64-Core Processor",
                cpu_cores=64,
                cpu_threads=128,
                mem_total_bytes=256 * 2**30,
                agent_version="0.1.0",
                last_seen_at=seen,
                last_seq=1 if seen else 0,
                latest=latest_document(rng, seen.timestamp(), util) if seen else None,
            )
        )
    with transaction.atomic():
        created = Machine.objects.bulk_create(rows, batch_size=200)
        MachineState.objects.bulk_create([m.hot.summarised() for m in created], batch_size=200)  # last_seen_at, latest
        Accelerator.objects.bulk_create(
            [
                Accelerator(
                    machine=m,
                    index=g,
                    vendor="nvidia",
                    name=MODELS[m.pk % len(MODELS)],
                    uuid=f"GPU-{g:08d}-bench",
                    mem_total_bytes=GPU_MEM,
                    power_limit_watts=700.0,
                    driver="590.48.01",
                )
                for m in created
                for g in range(GPUS)
            ],
            batch_size=2000,
        )
        # The last hour's minute rollups, in SQL: 60 buckets per machine, 8 GPU rows per bucket.
        params = {"start": now.replace(second=0, microsecond=0) - timedelta(minutes=60)}
        buckets = (
            "SELECT m.id AS machine_id, %(start)s + make_interval(mins => b) AS bucket, b "
            f"FROM {Machine._meta.db_table} m JOIN {MachineState._meta.db_table} s ON s.machine_id = m.id "
            "CROSS JOIN generate_series(0, 59) AS b WHERE s.last_seen_at IS NOT NULL"
        )
        with connection.cursor() as cur:
            cur.execute(
                f"INSERT INTO {SystemRollup._meta.db_table} "
                "(machine_id, resolution_s, bucket, count, cpu_percent_min, cpu_percent_mean, cpu_percent_max) "
                f"SELECT machine_id, 60, bucket, 6, 0, 40 + 30 * sin(b / 9.0 + machine_id), 100 FROM ({buckets}) AS x",
                params,
            )
            cur.execute(
                f"INSERT INTO {GpuRollup._meta.db_table} "
                "(machine_id, gpu_index, resolution_s, bucket, count, util_percent_min, util_percent_mean, util_percent_max) "
                f"SELECT machine_id, g, 60, bucket, 6, 0, 50 + 45 * sin(b / 9.0 + machine_id + g), 100 "
                f"FROM ({buckets}) AS x CROSS JOIN generate_series(0, {GPUS - 1}) AS g",
                params,
            )
            if history_hours:
                # Older minutes, as a fleet that has run a while keeps them (90 days by default): what
                # a range's read must not pay for (fleet migration 0017).
                older = {"start": params["start"] - timedelta(hours=history_hours), "n": 60 * history_hours}
                before = buckets.replace("generate_series(0, 59)", "generate_series(0, %(n)s - 1)")
                cur.execute(
                    f"INSERT INTO {SystemRollup._meta.db_table} (machine_id, resolution_s, bucket, count, "
                    "cpu_percent_min, cpu_percent_mean, cpu_percent_max) SELECT machine_id, 60, bucket, 6, 0, "
                    f"40 + 30 * sin(b / 9.0 + machine_id), 100 FROM ({before}) AS x ORDER BY bucket",
                    older,
                )
                cur.execute(
                    f"INSERT INTO {GpuRollup._meta.db_table} (machine_id, gpu_index, resolution_s, bucket, count, "
                    "util_percent_min, util_percent_mean, util_percent_max) SELECT machine_id, g, 60, bucket, 6, 0, "
                    f"50 + 45 * sin(b / 9.0 + machine_id + g), 100 FROM ({before}) AS x "
                    # In time order, as the rollup task writes them (each run, every machine's new minutes).
                    f"CROSS JOIN generate_series(0, {GPUS - 1}) AS g ORDER BY bucket",
                    older,
                )
            # The GPU mean the minute rollup writes onto the system rows (the page's sparklines read it).
            gpu_means([m.pk for m in created], MINUTE, params["start"], now + timedelta(minutes=1))
            # Tokens: a serving job on 60% of the online machines, one row per 10 s window (TOKEN_WINDOWS).
            cur.execute(
                f"INSERT INTO {ThroughputSample._meta.db_table} (machine_id, seq, job_key, source, ts, interval_s, "
                "prompt_tokens, generated_tokens, train_tokens, active_s, received_at) "
                "SELECT s.machine_id, w, 1, 'prometheus', %(now)s - make_interval(secs => 10 * w), 10, 5000, 20000, 0, "
                f"10, %(now)s FROM {MachineState._meta.db_table} s CROSS JOIN generate_series(0, %(windows)s - 1) AS w "
                "WHERE s.last_seen_at IS NOT NULL AND s.machine_id %% 5 < 3",
                {"now": now, "windows": TOKEN_WINDOWS},
            )
            try:
                from dashboard.fleet.models import ThroughputRollup
            except ImportError:  # BENCH_ROOT is a checkout from before token rollups
                rollup_table = None
            else:
                rollup_table = ThroughputRollup._meta.db_table
            if rollup_table:
                # A day of token rollups for those machines, as ingest writes them (six windows a
                # minute): the token charts past 3 h read them.
                for resolution, buckets in ((60, 1440), (3600, 24)):
                    cur.execute(
                        f"INSERT INTO {rollup_table} (machine_id, job_key, resolution_s, bucket, prompt_tokens, "
                        "generated_tokens, train_tokens) SELECT s.machine_id, 1, %(res)s, "
                        "to_timestamp(FLOOR(date_part('epoch', %(now)s::timestamptz) / %(res)s) * %(res)s) "
                        "- make_interval(secs => %(res)s * b), 500 * %(res)s, 2000 * %(res)s, 0 "
                        f"FROM {MachineState._meta.db_table} s CROSS JOIN generate_series(0, %(buckets)s - 1) AS b "
                        "WHERE s.last_seen_at IS NOT NULL AND s.machine_id %% 5 < 3",
                        {"now": now, "res": resolution, "buckets": buckets},
                    )
            if history_hours:
                # That took minutes: the machines last seen seconds before it would now show as silent.
                cur.execute(
                    f"UPDATE {MachineState._meta.db_table} SET last_seen_at = last_seen_at + "
                    "make_interval(secs => %(late)s) WHERE last_seen_at > %(now)s - interval '1 minute'",
                    {"late": (timezone.now() - now).total_seconds(), "now": now},
                )
            cur.execute(
                f"ANALYZE {Machine._meta.db_table}, {Accelerator._meta.db_table}, "
                f"{SystemRollup._meta.db_table}, {GpuRollup._meta.db_table}, {ThroughputSample._meta.db_table}"
                + (f", {rollup_table}" if rollup_table else "")
            )
    return {
        "seconds": time.perf_counter() - t0,
        "system_rollups": SystemRollup.objects.count(),
        "gpu_rollups": GpuRollup.objects.count(),
        "token_rows": ThroughputSample.objects.count(),
    }


def old_template(ref: str) -> str | None:
    """The whole-fleet card template as it was at ``ref``, or None without git or that commit."""
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{ref}:templates/fleet/_machines.html"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, default=1000, help="machines to seed, 8 GPUs each (default 1000)")
    parser.add_argument("--repeats", type=int, default=20, help="timed requests per case (default 20)")
    parser.add_argument("--before-repeats", type=int, default=5, help="timed calls of the old page (default 5)")
    parser.add_argument(
        "--history-hours",
        type=int,
        default=0,
        help="hours of minute rollups kept before the seeded hour (default 0; ~7 s each at 1,000 machines)",
    )
    parser.add_argument(
        "--before-ref", default=BEFORE_REF, help=f"git commit of the old template (default {BEFORE_REF})"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)

    try:
        with bench_database(DB_NAME) as url:
            setup_django(url)
            say(f"project: {ROOT}")
            from django.contrib.auth import get_user_model
            from django.core.cache import cache
            from django.db import connection
            from django.template import TemplateSyntaxError, engines
            from django.test import Client
            from django.test.utils import CaptureQueriesContext
            from django.utils import timezone

            from dashboard.fleet import queries
            from dashboard.web import views

            seeded = seed(args.machines, args.history_hours)
            say(
                f"seeded {args.machines:,} machines x {GPUS} GPUs, {seeded['system_rollups']:,} system + "
                f"{seeded['gpu_rollups']:,} GPU minute rollups, {seeded['token_rows']:,} throughput rows "
                f"in {seeded['seconds']:.1f} s"
            )
            user = get_user_model().objects.create_user("bench", password="x")
            client = Client()
            client.force_login(user)

            from dashboard.web import efficiency

            t0 = time.perf_counter()
            efficiency.refresh_ranking()  # as the beat does every minute; the page reads it from the cache
            say(f"busy-but-inefficient ranking (the beat's task) in {(time.perf_counter() - t0) * 1000:.0f} ms")
            last_page = -(-args.machines // 60)
            cases = [
                ("page 1 (problems first)", "/"),
                ("10 s refresh (?partial=1)", "/?partial=1"),
                ("filter: ?q=h100&state=online&sort=busiest", "/?q=h100&state=online&sort=busiest"),
                (f"last page (?sort=name&page={last_page})", f"/?sort=name&page={last_page}"),
            ]
            # The charts the page fetches after it loads: fewer repeats, they read an hour or a day of the fleet.
            chart_cases = [
                (
                    "chart: fleet tokens/s, 1 h (/api/v1/fleet/series)",
                    "/api/v1/fleet/series?metric=tokens.generated&since=1h",
                ),
                ("chart: fleet tokens/s, 3 h", "/api/v1/fleet/series?metric=tokens.generated&since=3h"),
                (
                    "chart: fleet tokens/s, 24 h (token rollups)",
                    "/api/v1/fleet/series?metric=tokens.generated&since=24h",
                ),
                ("chart: fleet tokens/s, 7 d (token rollups)", "/api/v1/fleet/series?metric=tokens.generated&since=7d"),
                ("chart: fleet utilisation and money, 1 h (/api/v1/fleet/history)", "/api/v1/fleet/history?since=1h"),
                ("chart: fleet utilisation and money, 6 h", "/api/v1/fleet/history?since=6h"),
                ("chart: fleet utilisation and money, 24 h", "/api/v1/fleet/history?since=24h"),
            ]
            results = []  # case, ms, n, queries, sql ms, body KiB
            for label, path, repeats in [(*c, args.repeats) for c in cases] + [
                (*c, args.before_repeats) for c in chart_cases
            ]:
                response = client.get(path)  # warm-up, and the size
                assert response.status_code == 200, (path, response.status_code)

                def get(path: str = path):  # the charts' answers are shared for a while: time the work
                    if "/api/" in path:
                        cache.clear()
                    return client.get(path)

                ms = median(timed(get, repeats)) * 1000
                with CaptureQueriesContext(connection) as captured:
                    get()
                sql_ms = sum(float(q["time"]) for q in captured.captured_queries) * 1000
                results.append(
                    [
                        label,
                        f"{ms:.1f}",
                        repeats,
                        len(captured.captured_queries),
                        f"{sql_ms:.1f}",
                        f"{len(response.content) / 1024:.0f}",
                    ]
                )

            source = old_template(args.before_ref)
            template = None
            if source is None:
                say(f"no git or no commit {args.before_ref}: the old page is not measured")
            else:
                try:
                    template = engines["django"].from_string(source)
                except TemplateSyntaxError as exc:  # a tag library it loads is gone
                    say(f"the old template of {args.before_ref} no longer compiles ({exc}); not measured")
            if template is not None:
                server_url = "http://testserver"

                def old_page() -> str:
                    context = {
                        "machines": [views._present(m) for m in queries.fleet_overview()],
                        "server_url": server_url,
                    }
                    now = timezone.now()
                    context["fleet_tokens"] = views._fleet_tokens(now - timedelta(hours=1), now)
                    return template.render(context)

                html = old_page()
                ms = median(timed(old_page, args.before_repeats)) * 1000
                with CaptureQueriesContext(connection) as captured:
                    old_page()
                sql_ms = sum(float(q["time"]) for q in captured.captured_queries) * 1000
                results.append(
                    [
                        f"before ({args.before_ref}): fleet_overview + _present + old template",
                        f"{ms:.1f}",
                        args.before_repeats,
                        len(captured.captured_queries),
                        f"{sql_ms:.1f}",
                        f"{len(html) / 1024:.0f}",
                    ]
                )
                ms = median(timed(queries.fleet_overview, args.before_repeats)) * 1000
                results.append(["before: queries.fleet_overview() alone", f"{ms:.1f}", args.before_repeats, "", "", ""])

        print()
        print(
            f"{args.machines:,} machines x {GPUS} GPUs, {1 + args.history_hours} h of minute rollups; in-process, logged in "
            "(the old page without login, middleware or base template)"
        )
        print(table(results, ["case", "ms (median)", "n", "queries", "SQL ms", "body KiB"]))
        return 0
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        return 130


if __name__ == "__main__":
    sys.exit(main())
