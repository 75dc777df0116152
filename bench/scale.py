#!/usr/bin/env python3
"""A simulated fleet against the whole server on this machine: can one host take 1,000 machines?

    .venv/bin/python bench/scale.py [--machines 1000] [--gpus 8] [--interval 5] [--seconds 600]
                                    [--ramp 250,500,1000,1500,2000] [--ramp-seconds 60]

1. Creates and migrates its own PostgreSQL database (hwdash_bench_scale) and data folder; starts
   gunicorn (2 sync workers, DEBUG=0) and a Celery worker with beat (rollups every 30 s, as in
   production), both with REDIS_URL=redis://127.0.0.1:6379/13 (cache and broker).
2. Ramp: ``manage.py simulate`` with each ``--ramp`` count up to ``--machines`` for
   ``--ramp-seconds`` each; counts above ``--machines`` run after the long run, so that the pages
   are measured with exactly ``--machines`` machines enrolled.
3. The long run: ``--machines`` x ``--gpus`` at one window every ``--interval`` s for
   ``--seconds``. Every ``--probe-every`` s, as a logged-in user: the fleet page ``/``, the
   ``/api/v1/machines`` JSON, a machine page and its six chart series over 1 h and 24 h, each
   timed over HTTP (what a browser waits, including the wait for a free gunicorn worker) and
   in-process through Django's test client on the same database (the server's own time), with
   the fleet page's SQL timed query by query.
4. CPU of gunicorn, PostgreSQL, Redis, Celery and the simulator (psutil, every 5 s), and of the
   whole machine (other users of the shared VM included).

Prints one table per phase and drops the database at the end, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import PYTHON, ROOT, bench_database, bench_env, median, percentile, say, table

DB_NAME = "hwdash_bench_scale"
REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/13")
SERIES = (
    "system.cpu_percent",
    "system.mem_used_bytes",
    "gpu.util_percent",
    "gpu.mem_used_bytes",
    "gpu.power_watts",
    "gpu.temp_c",
)  # the machine page's six charts
GROUPS = ("gunicorn", "postgres", "redis", "celery", "simulator")
SPANS = ("1h", "24h", "7d")


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- CPU ------------------------------------------------------------------------------------


class CpuMeter(threading.Thread):
    """CPU seconds per process group, from psutil every ``every_s`` (a process that exits loses at
    most its last interval)."""

    def __init__(self, roots: dict[str, int], every_s: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.roots = dict(roots)  # group -> root pid (its children count too)
        self.every_s = every_s
        self.lock = threading.Lock()
        self.seen: dict[int, tuple[str, float]] = {}
        self.totals = {g: 0.0 for g in (*GROUPS, "machine")}
        self.machine_last: float | None = None
        self.halt = threading.Event()

    def _groups(self):
        import psutil

        out: dict[int, str] = {}
        for group, pid in list(self.roots.items()):
            try:
                root = psutil.Process(pid)
                for p in [root, *root.children(recursive=True)]:
                    out[p.pid] = group
            except psutil.Error:
                pass
        for p in psutil.process_iter(["name"]):
            if p.info["name"] in ("postgres", "postmaster"):
                out[p.pid] = "postgres"
            elif p.info["name"] == "redis-server":
                out[p.pid] = "redis"
        return out

    def sample(self) -> None:
        import psutil

        times = psutil.cpu_times()  # the whole VM, summed over its cores
        machine = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        with self.lock:
            for pid, group in self._groups().items():
                try:
                    t = psutil.Process(pid).cpu_times()
                except psutil.Error:
                    continue
                used = t.user + t.system
                before = self.seen.get(pid)
                if before is not None and before[0] == group:
                    self.totals[group] += used - before[1]
                self.seen[pid] = (group, used)
            if self.machine_last is not None:
                self.totals["machine"] += machine - self.machine_last
            self.machine_last = machine

    def set_root(self, group: str, pid: int) -> None:
        with self.lock:
            self.roots[group] = pid

    def snapshot(self) -> dict[str, float]:
        self.sample()
        with self.lock:
            return dict(self.totals)

    def run(self) -> None:
        while not self.halt.wait(self.every_s):
            self.sample()


def cpu_percent(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Percent of one core per group over the span (200 % = both cores of this VM)."""
    return {g: 100 * (after[g] - before[g]) / seconds for g in after}


# --- servers --------------------------------------------------------------------------------


def start_gunicorn(env: dict[str, str], port: int, workers: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            str(Path(PYTHON).with_name("gunicorn")),
            "dashboard.wsgi",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "--timeout",
            "60",
        ],
        cwd=ROOT,
        env=env,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("gunicorn did not answer within 30 s")


def start_celery(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """A worker with an embedded beat, as docker-compose runs them (but in one process tree)."""
    return subprocess.Popen(
        [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "dashboard",
            "worker",
            "-B",
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )


def task_times(log_path: Path, since: float) -> dict[str, list[float]]:
    """Seconds per finished Celery task (by name) logged after ``since`` (Unix s)."""
    out: dict[str, list[float]] = {}
    pattern = re.compile(
        r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+: INFO/\S+\] Task (\S+)\[[^\]]+\] succeeded in ([\d.]+)s"
    )
    for line in log_path.read_text(errors="replace").splitlines():
        m = pattern.match(line)
        if m:
            at = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
            if at >= since - 1:
                out.setdefault(m.group(2), []).append(float(m.group(3)))
    return out


def task_runs(log_path: Path, since: float) -> list[tuple[str, float, float]]:
    """(task name, start, end) in Unix s of each Celery task that finished after ``since``: the log
    stamps the end, and the start is that less the run's duration."""
    pattern = re.compile(
        r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d+): INFO/\S+\] Task (\S+)\[[^\]]+\] succeeded in ([\d.]+)s"
    )
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        m = pattern.match(line)
        if m:
            end = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            if end >= since - 1:
                out.append((m.group(3).rsplit(".", 1)[-1], end - float(m.group(4)), end))
    return out


def slowest_probes(probe: PageProbe, runs: list[tuple[str, float, float]], since: float, labels: list[str]) -> str:
    """For each of ``labels``, its slowest in-process view: when, how long, and the Celery tasks
    running meanwhile (the pages' p99 is their slowest of ~16 probes: what did it meet?)."""
    rows = []
    for label in labels:
        views = list(zip(probe.inproc.get(label, []), probe.inproc_at.get(label, []), strict=True))
        if not views:
            continue
        ms, (start, end) = max(views)
        during = [f"{name} ({b - a:.1f} s)" for name, a, b in runs if a <= end and b >= start]
        rows.append([label, f"{ms:.0f}", f"{start - since:.0f}", ", ".join(during) or "none"])
    return table(rows, ["page", "slowest ms", "at s", "Celery tasks running meanwhile"])


# --- the simulator --------------------------------------------------------------------------


def simulate(
    env: dict[str, str], url: str, machines: int, args, seconds: float, work: Path, meter: CpuMeter
) -> dict[str, Any]:
    """Run ``manage.py simulate`` for ``seconds``; its summary, with the phase's CPU and task times."""
    summary = work / f"summary-{machines}-{int(time.time())}.json"
    cmd = [
        PYTHON,
        "manage.py",
        "simulate",
        "--url",
        url,
        "--machines",
        str(machines),
        "--gpus",
        str(args.gpus),
        "--interval",
        str(args.interval),
        "--seconds",
        str(seconds),
        "--spool-dir",
        str(work / "spool"),
        "--summary",
        str(summary),
        "--status-every",
        "5",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    meter.set_root("simulator", proc.pid)
    cpu0, t0, wall0 = meter.snapshot(), time.perf_counter(), time.time()
    try:
        proc.wait()
    finally:
        stop(proc)
    cpu = cpu_percent(cpu0, meter.snapshot(), time.perf_counter() - t0)
    if proc.returncode != 0 or not summary.exists():
        raise RuntimeError(f"the simulator exited with {proc.returncode}")
    out = json.loads(summary.read_text())
    out["cpu"] = cpu
    out["started"] = wall0
    return out


def delay_s(s: dict[str, Any]) -> float:
    """Mean wait of a window in its spool after the start-up burst (Little's law: backlog / rate)."""
    return s["backlog_median"] / s["offered_per_s"]


def kept_up(s: dict[str, Any]) -> bool:
    """Backlog near zero: after the start-up burst a window waits under 1 s on average in its spool,
    and (nearly) every window made was accepted, at (nearly) the rate offered (a simulator starved
    of CPU would offer less than it should)."""
    return (
        delay_s(s) <= 1.0
        and s["accepted"] >= 0.99 * s["windows"]
        and s["windows"] >= 0.97 * s["offered_per_s"] * s["seconds"]
    )


# --- pages ----------------------------------------------------------------------------------


class PageProbe(threading.Thread):
    """Times the pages a user opens, over HTTP and in-process, every ``every_s``."""

    def __init__(self, port: int, session: str, machine: str, every_s: float) -> None:
        super().__init__(daemon=True)
        self.port, self.session, self.machine, self.every_s = port, session, machine, every_s
        self.http: dict[str, list[float]] = {}
        self.inproc: dict[str, list[float]] = {}
        self.inproc_at: dict[str, list[tuple[float, float]]] = {}  # (start, end) Unix s of each in-process view
        self.fleet_sql: list[list[tuple[float, str]]] = []  # per probe: (ms, SQL) of the fleet page's queries
        self.overview_ms: list[float] = []  # queries.fleet_overview() alone: SQL plus building the dicts
        self.sizes: dict[str, int] = {}
        self.errors: list[str] = []
        self.halt = threading.Event()
        self.rollup_lag_s: list[float] = []  # now - the rollup watermark (rows received before it are rolled up)
        self.overview = True  # also time queries.fleet_overview() (every machine's dict: costly past 2,000)

    def paths(self) -> list[tuple[str, str]]:
        out = [
            ("fleet page /", "/"),
            ("GET /api/v1/machines", "/api/v1/machines"),
            (f"machine page /machines/{self.machine}/", f"/machines/{self.machine}/"),
        ]
        for span in SPANS:
            for metric in SERIES:
                out.append(
                    (f"series {span} {metric}", f"/api/v1/machines/{self.machine}/series?metric={metric}&since={span}")
                )
        return out

    def _http_get(self, path: str) -> float:
        """Seconds for one GET over a new connection (as a browser's, without keep-alive)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        t0 = time.perf_counter()
        try:
            conn.request("GET", path, headers={"Cookie": f"sessionid={self.session}"})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {resp.status} {body[:120]!r}")
        self.sizes[path] = len(body)
        return time.perf_counter() - t0

    def probe_once(self, record: bool = True) -> None:
        """Time every path once; ``record=False`` is the warm-up pass, whose figures are dropped."""
        from django.db import connection
        from django.test import Client

        from dashboard.fleet.models import RollupState

        client = Client()
        client.cookies["sessionid"] = self.session
        mark = RollupState.objects.filter(name="rollup").first()
        if mark is not None and record:
            self.rollup_lag_s.append(time.time() - mark.watermark.timestamp())
        for label, path in self.paths():
            try:
                http_ms = self._http_get(path) * 1000
                if record:
                    self.http.setdefault(label, []).append(http_ms)
                queries: list[tuple[float, str]] = []

                def timing(execute, sql, params, many, context):
                    t = time.perf_counter()
                    try:
                        return execute(sql, params, many, context)
                    finally:
                        queries.append(((time.perf_counter() - t) * 1000, sql))

                t0, started = time.perf_counter(), time.time()
                with connection.execute_wrapper(timing):
                    resp = client.get(path)
                if resp.status_code != 200:
                    raise RuntimeError(f"in-process GET {path}: HTTP {resp.status_code}")
                if not record:
                    continue
                self.inproc.setdefault(label, []).append((time.perf_counter() - t0) * 1000)
                self.inproc_at.setdefault(label, []).append((started, time.time()))
                if path == "/" and self.overview:
                    self.fleet_sql.append(queries)
                    from dashboard.fleet import queries as fleet_queries

                    t0 = time.perf_counter()
                    fleet_queries.fleet_overview()
                    self.overview_ms.append((time.perf_counter() - t0) * 1000)
            except Exception as exc:  # noted and reported; the next probe tries again
                self.errors.append(f"{label}: {exc}")

    def run(self) -> None:
        from django.db import connection

        # The first probe waits for a few windows per machine (and one minute rollup) to exist.
        # It is a warm-up, not timed: this process's first request of each page imports its views
        # and compiles its templates, which a long-running server did once, before any user came
        # (in the 750-machine run of 2026-11-30, which timed that cold view among its 18, the fleet
        # page's server p99 was 884 ms against a p50 of 165 ms).
        if self.halt.wait(self.every_s):
            return
        self.probe_once(record=False)
        while not self.halt.wait(self.every_s):
            self.probe_once()
        connection.close()


def sql_breakdown(probes: list[list[tuple[float, str]]]) -> list[list[str]]:
    """The fleet page's queries, grouped by the table they read, median ms per page view."""
    groups: dict[str, list[float]] = {}
    for queries in probes:
        per: dict[str, float] = {}
        for ms, sql in queries:
            m = re.search(r'FROM "(\w+)"', sql)
            key = m.group(1) if m else sql.split()[0]
            if "fleet_gpurollup" in sql or "fleet_systemrollup" in sql:
                key += " (sparklines)"
            per[key] = per.get(key, 0.0) + ms
        for key, ms in per.items():
            groups.setdefault(key, []).append(ms)
    rows = sorted(groups.items(), key=lambda kv: -median(kv[1]))
    totals = [sum(ms for ms, _ in queries) for queries in probes]
    counts = [len(queries) for queries in probes]
    return [[k, f"{median(v):.1f}", f"{max(v):.1f}", str(len(v))] for k, v in rows] + [
        [f"all SQL ({median(counts):.0f} queries)", f"{median(totals):.1f}", f"{max(totals):.1f}", str(len(totals))]
    ]


def profile_fleet_page(session: str, top: int = 8) -> str:
    """One in-process fleet page view under cProfile: its parts, then the hottest functions."""
    import cProfile
    import io
    import pstats

    from django.test import Client

    client = Client()
    client.cookies["sessionid"] = session
    client.get("/")  # warm: templates compiled, connection open
    prof = cProfile.Profile()
    prof.enable()
    client.get("/")
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())

    def cumulative_ms(filename_end: str, function: str) -> float:
        return 1000 * sum(
            v[3]
            for (f, _, fn), v in stats.stats.items()  # type: ignore[attr-defined]
            if f.endswith(filename_end) and fn == function
        )

    parts = (
        f"view {cumulative_ms('fleet/views.py', 'overview'):.0f} ms (profiled) = "
        f"queries.fleet_overview() {cumulative_ms('fleet/queries.py', 'fleet_overview'):.0f} ms "
        f"+ views._present() {cumulative_ms('fleet/views.py', '_present'):.0f} ms "
        f"+ template render {cumulative_ms('django/shortcuts.py', 'render'):.0f} ms"
    )
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    lines = out.getvalue().splitlines()
    first = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return parts + "\n" + "\n".join(line for line in lines[first:] if line.strip())


# --- main -----------------------------------------------------------------------------------


def phase_row(name: str, s: dict[str, Any]) -> list[str]:
    cpu = s["cpu"]
    return [
        name,
        f"{s['machines']:,}",
        f"{s['offered_per_s']:.0f}",
        f"{s['accepted_per_s']:.1f}",
        f"{s['p50_ms_steady']:.0f}",
        f"{s['p99_ms_steady']:.0f}",
        f"{s['backlog_median']:,.0f}",
        f"{s['backlog_p90']:,.0f}",
        f"{s['backlog_max']:,}",
        f"{delay_s(s):.1f}",
        f"{s['backlog_final']:,}",
        str(s["errors"]),
        *(f"{cpu[g]:.0f}" for g in (*GROUPS, "machine")),
        "yes" if kept_up(s) else "NO",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, default=1000, help="machines in the long run (default 1000)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per machine (default 8)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds per window (default 5)")
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the long run (default 600)")
    parser.add_argument("--ramp", default="250,500,1000,1500,2000", help="machine counts of the ramp ('' for none)")
    parser.add_argument("--ramp-seconds", type=float, default=60.0, help="length of each ramp step (default 60)")
    parser.add_argument("--probe-every", type=float, default=30.0, help="seconds between page probes (default 30)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (default 2)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)
    ramp = [int(x) for x in args.ramp.split(",") if x.strip()]

    work = Path(tempfile.mkdtemp(prefix="hwdash-bench-scale-"))
    gunicorn = celery = None
    meter: CpuMeter | None = None
    try:
        with bench_database(DB_NAME) as url:
            env = bench_env(
                url,
                REDIS_URL=REDIS_URL,
                DASHBOARD_DATA_DIR=str(work / "data"),
                ALLOWED_HOSTS="127.0.0.1,localhost,testserver",
            )
            os.environ.update(env)
            import django

            django.setup()
            import redis

            redis.Redis.from_url(REDIS_URL).flushdb()  # our own database number: stale tasks out
            from django.contrib.auth import get_user_model
            from django.test import Client

            user = get_user_model().objects.create_user("bench", password="bench-pass-123")
            login = Client()
            login.force_login(user)
            session = login.cookies["sessionid"].value

            port = free_port()
            gunicorn = start_gunicorn(env, port, args.workers)
            celery_log = work / "celery.log"
            celery = start_celery(env, celery_log)
            server = f"http://127.0.0.1:{port}"
            say(
                f"project: {ROOT}; gunicorn {server} ({args.workers} sync workers), Celery worker + beat, "
                f"Redis {REDIS_URL}; work folder {work}"
            )
            meter = CpuMeter({"gunicorn": gunicorn.pid, "celery": celery.pid})
            meter.start()

            phases: list[tuple[str, dict[str, Any]]] = []
            for n in [r for r in ramp if r <= args.machines]:
                say(f"ramp: {n} machines for {args.ramp_seconds:.0f} s")
                phases.append((f"ramp {n}", simulate(env, server, n, args, args.ramp_seconds, work, meter)))

            say(
                f"long run: {args.machines} machines x {args.gpus} GPUs, a window every {args.interval:g} s, "
                f"for {args.seconds:.0f} s; pages probed every {args.probe_every:.0f} s"
            )
            probe = PageProbe(port, session, "sim-0001", args.probe_every)
            probe.overview = args.machines <= 2000
            probe.start()
            try:
                long_run = simulate(env, server, args.machines, args, args.seconds, work, meter)
            finally:
                probe.halt.set()
                probe.join(timeout=120)
            phases.append((f"long run {args.seconds:.0f} s", long_run))
            tasks = task_times(celery_log, long_run["started"])
            runs = task_runs(celery_log, long_run["started"])
            profile = profile_fleet_page(session)

            for n in [r for r in ramp if r > args.machines]:
                say(f"ramp: {n} machines for {args.ramp_seconds:.0f} s")
                phases.append((f"ramp {n}", simulate(env, server, n, args, args.ramp_seconds, work, meter)))

            from django.db import connection

            with connection.cursor() as cur:
                cur.execute(
                    "SELECT pg_database_size(current_database()), (SELECT count(*) FROM fleet_systemsample), "
                    "(SELECT count(*) FROM fleet_gpusample), pg_total_relation_size('fleet_gpusample'), "
                    "pg_total_relation_size('fleet_systemsample'), "
                    "(SELECT count(*) - count(DISTINCT (machine_id, seq)) FROM fleet_systemsample)"
                )
                db_bytes, system_rows, gpu_rows, gpu_bytes, system_bytes, twice = cur.fetchone()
                # Partitioned tables: pg_total_relation_size of the parent is 0; sum the partitions.
                cur.execute(
                    "SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)) FILTER (WHERE p.relname = 'fleet_gpusample'), 0), "
                    "coalesce(sum(pg_total_relation_size(i.inhrelid)) FILTER (WHERE p.relname = 'fleet_systemsample'), 0) "
                    "FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent"
                )
                part_gpu, part_system = cur.fetchone()
                gpu_bytes, system_bytes = int(gpu_bytes or part_gpu), int(system_bytes or part_system)
            made = sum(s["windows"] for _, s in phases)
            spooled = phases[-1][1]["backlog_final"]  # one spool folder: earlier leftovers went out later
            # The API against a raw COPY of the same rows, same server, same run (bench/ingest.py's code).
            say(
                "ingest capacity: a raw COPY, then the API for 20 s with 10- and 100-window batches (bench/ingest.py's clients)"
            )
            from bench import ingest as ingest_bench

            cap_machines = ingest_bench.enroll(20)
            copy = ingest_bench.copy_baseline(url, [m for m, _ in cap_machines], 300, 1)  # empties the raw tables
            # Ingest sends binary COPY since issue 13: the API against that too, the stricter figure.
            copy_bin = ingest_bench.copy_baseline(url, [m for m, _ in cap_machines], 300, 1, binary=True)
            api = ingest_bench.api_run([port], cap_machines, 8, 10, 20.0)
            api_copy = (api["samples"] / api["seconds"]) / (copy["samples"] / copy["seconds"])
            api_copy_bin = (api["samples"] / api["seconds"]) / (copy_bin["samples"] / copy_bin["seconds"])
            # What an agent with a backlog sends (hwprobe's --batch-max): the per-request costs spread thinner.
            api_big = ingest_bench.api_run([port], cap_machines, 8, 100, 20.0)
            api_big_copy = (api_big["samples"] / api_big["seconds"]) / (copy["samples"] / copy["seconds"])
            connection.close()
            stop(celery)
            stop(gunicorn)
            celery = gunicorn = None
            meter.halt.set()
            redis.Redis.from_url(REDIS_URL).flushdb()  # beat's leftovers

        # -- report --
        print()
        print(
            f"Scale: {args.gpus} GPUs per machine, a window every {args.interval:g} s; gunicorn {args.workers} sync "
            f"workers, PostgreSQL, Redis, Celery worker+beat and the simulator on one 2-core VM. CPU in % of one core "
            f"(200 = the whole VM; 'machine' includes other users of the VM)."
        )
        print(
            table(
                [phase_row(name, s) for name, s in phases],
                [
                    "phase",
                    "machines",
                    "offered/s",
                    "accepted/s",
                    "p50 ms",
                    "p99 ms",
                    "backlog p50",
                    "backlog p90",
                    "backlog max",
                    "delay s",
                    "left",
                    "errors",
                    *(f"CPU {g}" for g in GROUPS),
                    "CPU machine",
                    "near 0",
                ],
            )
        )
        print(
            "p50/p99: ingest request latency; backlog p50/p90: windows waiting in all spools, sampled every 5 s; "
            "both after the first 30 s (each machine's first batch carries its inventory). backlog max: the whole "
            "phase; delay: backlog p50 / offered rate; left: in the spools after a 5 s flush at the end; near 0: "
            "delay <= 1 s with every window accepted."
        )
        up = [s["machines"] for _, s in phases if kept_up(s)]
        down = [s["machines"] for _, s in phases if not kept_up(s)]
        print(
            f"highest machine count that kept the backlog near zero: {max(up) if up else 'none'}"
            + (f"; lowest that did not: {min(down)}" if down else "")
        )
        for name, s in phases:
            if s["errors"]:
                print(f"  {name}: {s['errors']} failed requests, last: {s['last_error']}")
        print()
        print(
            f"Pages during the long run ({args.machines:,} machines enrolled), ms; over HTTP includes the wait for a "
            f"gunicorn worker busy with ingest; in-process is Django's own time on the same database:"
        )
        rows = []
        for label, path in probe.paths():
            h, i = probe.http.get(label, []), probe.inproc.get(label, [])
            size = probe.sizes.get(path, 0) / 1024
            rows.append(
                [
                    label,
                    f"{median(h):.0f}",
                    f"{percentile(h, 99):.0f}",
                    f"{median(i):.0f}",
                    f"{percentile(i, 99):.0f}",
                    f"{size:,.0f}",
                    str(len(h)),
                ]
            )
        for span in SPANS:
            h = [sum(x) for x in zip(*(probe.http.get(f"series {span} {m}", []) for m in SERIES))]
            i = [sum(x) for x in zip(*(probe.inproc.get(f"series {span} {m}", []) for m in SERIES))]
            rows.append(
                [
                    f"machine page's 6 series {span}, one after another",
                    f"{median(h):.0f}",
                    f"{percentile(h, 99):.0f}",
                    f"{median(i):.0f}",
                    f"{percentile(i, 99):.0f}",
                    "",
                    str(len(h)),
                ]
            )
        print(table(rows, ["request", "HTTP p50", "HTTP p99", "server p50", "server p99", "KiB", "n"]))
        for e in probe.errors[:5]:
            print(f"  probe error: {e}")
        if probe.fleet_sql:
            print()
            print(f"The fleet page's SQL, in-process, by table (ms per page view, {len(probe.fleet_sql)} views):")
            print(table(sql_breakdown(probe.fleet_sql), ["table", "median ms", "max ms", "views"]))
            print(
                f"queries.fleet_overview() alone (that SQL plus the machine dicts): median {median(probe.overview_ms):.0f} ms; "
                f"the rest of the page's server time is the view's _present() and the template"
            )
        if profile:
            print()
            print(
                "One in-process fleet page view under cProfile (its parts; then the functions with the most own time):"
            )
            print(profile)
        if tasks:
            print()
            print("Celery tasks during the long run (seconds per run):")
            print(
                table(
                    [[name, str(len(v)), f"{median(v):.2f}", f"{max(v):.2f}"] for name, v in sorted(tasks.items())],
                    ["task", "runs", "median s", "max s"],
                )
            )
            print()
            print("The slowest in-process view of each page (its p99), seconds into the long run:")
            targeted = ["fleet page /", "machine page /machines/sim-0001/"] + [f"series 7d {m}" for m in SERIES]
            print(slowest_probes(probe, runs, long_run["started"], targeted))
        lr = {"agent_backlog_p50": math.nan, "agent_backlog_p99": math.nan, "agent_backlog_max": math.nan, **long_run}
        rollup_s = tasks.get("dashboard.fleet.tasks.rollup", [])
        rollup_share = sum(rollup_s) / lr["seconds"] if lr["seconds"] else math.nan
        lag = max(probe.rollup_lag_s, default=math.nan)

        def inproc(label: str, q: float = 50) -> float:
            return percentile(probe.inproc.get(label, []), q)

        fleet_ms = inproc("fleet page /", 99)
        machine_ms = inproc(f"machine page /machines/{probe.machine}/", 99)
        week_ms = max((inproc(f"series 7d {m}", 99) for m in SERIES), default=math.nan)

        def verdict(ok: bool) -> str:
            return "met" if ok else "**not met**"

        print()
        print(
            f"Issue 13 targets: {args.machines:,} machines x {args.gpus} GPUs, a window every {args.interval:g} s "
            f"({args.machines / args.interval:,.0f} windows/s), {lr['seconds']:.0f} s (the long run)"
        )
        print(
            table(
                [
                    [
                        "spool backlog per agent (after the first 30 s)",
                        "p50 <= 1, p99 <= 3 windows",
                        f"p50 {lr['agent_backlog_p50']:.0f}, p99 {lr['agent_backlog_p99']:.0f} (max {lr['agent_backlog_max']})",
                        verdict(lr["agent_backlog_p50"] <= 1 and lr["agent_backlog_p99"] <= 3),
                    ],
                    [
                        "ingest latency",
                        "p99 <= 1 s",
                        f"p99 {lr['p99_ms_steady']:,.0f} ms (p50 {lr['p50_ms_steady']:,.0f})",
                        verdict(lr["p99_ms_steady"] <= 1000),
                    ],
                    [
                        "rollups: share of wall time; lag (now - watermark, max of probes)",
                        "<= 20 %; <= 60 s (one bucket)",
                        f"{rollup_share:.0%} ({len(rollup_s)} runs, median {median(rollup_s) if rollup_s else math.nan:.1f} s); "
                        f"lag max {lag:.0f} s",
                        verdict(rollup_share <= 0.20 and lag <= 60),
                    ],
                    [
                        "fleet page, server p99 (in-process)",
                        "<= 300 ms",
                        f"{fleet_ms:,.0f} ms",
                        verdict(fleet_ms <= 300),
                    ],
                    [
                        "machine page and its 7 d series, server p99 (slowest series)",
                        "<= 100 ms",
                        f"{machine_ms:,.0f} ms / {week_ms:,.0f} ms",
                        verdict(machine_ms <= 100 and week_ms <= 100),
                    ],
                    [
                        "API vs a raw COPY of the same rows, same run",
                        ">= 50 %",
                        f"{api_copy:.0%} ({api['samples'] / api['seconds']:,.0f} vs {copy['samples'] / copy['seconds']:,.0f} windows/s); "
                        f"{api_copy_bin:.0%} of a binary COPY ({copy_bin['samples'] / copy_bin['seconds']:,.0f} windows/s); "
                        f"with 100-window batches {api_big_copy:.0%} ({api_big['samples'] / api_big['seconds']:,.0f} windows/s)",
                        verdict(api_copy >= 0.5),  # judged on the 10-window batches
                    ],
                    [
                        "windows stored (all phases)",
                        "all, once",
                        f"{system_rows:,} stored + {spooled:,} still spooled of {made:,} made; {twice:,} twice",
                        verdict(system_rows + spooled == made and twice == 0),
                    ],
                ],
                ["measure", "target", "measured", ""],
            )
        )
        samples = system_rows
        print()
        print(
            f"Database at the end: {db_bytes / 2**20:,.0f} MiB; {system_rows:,} system + {gpu_rows:,} GPU rows "
            f"({(gpu_bytes + system_bytes) / max(samples, 1) / 1024:.1f} KiB per window with its {args.gpus} GPU rows, "
            f"indexes included); at {args.machines / args.interval:.0f} windows/s that is "
            f"{(gpu_bytes + system_bytes) / max(samples, 1) * args.machines / args.interval * 86400 / 2**30:,.0f} GiB "
            f"and {(system_rows + gpu_rows) / max(samples, 1) * args.machines / args.interval * 86400 / 1e6:,.0f} M rows a day of raw samples"
        )
        return 0
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        return 130
    finally:
        if meter is not None:
            meter.halt.set()
        stop(celery)
        stop(gunicorn)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
