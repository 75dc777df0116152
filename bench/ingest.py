#!/usr/bin/env python3
"""Ingest throughput: the HTTP API against a raw COPY of the same rows into the same tables.

    .venv/bin/python bench/ingest.py [--seconds 30] [--machines 20] [--clients 8] [--windows 10]

1. Creates and migrates its own PostgreSQL database (hwdash_bench_ingest), enrolls N machines.
2. Baseline: one psycopg COPY per table, in one transaction, of the rows the ingest would write
   for the same kind of batches (1 system row + 8 GPU rows per sample), rows/s and samples/s;
   measured again after the API phase (step 4), and the ratio taken against the mean of the two.
3. Where the time goes, in this process, for the same batches: JSON encoding (client side),
   pydantic validation, store_batch (SQL vs Python), the whole Django stack (test client).
4. The HTTP API: gunicorn dashboard.wsgi, 2 sync workers by default; several agent-like client threads,
   each posting for its own machines with their own tokens, for --seconds; accepted samples,
   requests/s, latency p50/p99.
5. A table with the ratio API/COPY. Prints figures, asserts nothing. gunicorn and the database
   are cleaned up at the end, Ctrl-C included.

A "sample" is one machine window; its "rows" are 1 system + 8 GPU rows.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    ROOT,
    bench_database,
    bench_env,
    make_batch,
    make_sample,
    median,
    percentile,
    say,
    setup_django,
    table,
)

DB_NAME = "hwdash_bench_ingest"
GPUS = 8
ROWS_PER_SAMPLE = 1 + GPUS


def _sigterm(signum, frame):
    raise KeyboardInterrupt


# --- enrolment --------------------------------------------------------------------------------


def enroll(n: int) -> list[tuple[int, str]]:
    """N machines with one agent token each: [(machine_id, token)]."""
    from dashboard.fleet.models import Machine

    out = []
    for i in range(n):
        m = Machine.objects.create(name=f"bench-{i:03d}")
        out.append((m.pk, m.issue_token(label="bench")))
    return out


# --- 1. COPY baseline -------------------------------------------------------------------------


def copy_rows(machine_ids: list[int], windows: int):
    """The rows store_batch would write for ``windows`` samples per machine (seqs 1..windows): each
    batch validated and laid out by the same code ingest uses (``payload.Batch.laid_out``)."""
    from dashboard.fleet.payload import Batch

    now = time.time()
    received = datetime.now(UTC)
    system_rows, gpu_rows = [], []
    for mid in machine_ids:
        for start in range(1, windows + 1, 100):
            seqs = range(start, min(windows, start + 99) + 1)
            batch = Batch.model_validate(make_batch(seqs, now - 10 * (windows - start), gpus=GPUS))
            for s, (system, gpus) in zip(batch.samples, batch.laid_out(), strict=True):
                ts = datetime.fromtimestamp(s.ts, tz=UTC)
                system_rows.append([mid, s.seq, ts, s.interval_s, s.count, received, *system])
                for g, values in zip(s.gpus, gpus, strict=True):
                    gpu_rows.append([mid, s.seq, g.index, ts, s.interval_s, s.count, received, *values])
    return system_rows, gpu_rows


def copy_baseline(url: str, machine_ids: list[int], windows: int, repeats: int, binary: bool = False) -> dict:
    """All the rows in one transaction, one COPY per table: text (the baseline of every earlier
    figure) or binary (what ingest itself sends since issue 13, with the column types set)."""
    import psycopg

    from dashboard.fleet.ingest import GPU_INSERT, SYSTEM_INSERT, column_types
    from dashboard.fleet.models import GpuSample, SystemSample

    system_rows, gpu_rows = copy_rows(machine_ids, windows)
    st, gt = SystemSample._meta.db_table, GpuSample._meta.db_table
    times = []
    with psycopg.connect(url, autocommit=True) as conn:
        fmt = " (FORMAT BINARY)" if binary else ""
        parts = [(st, SYSTEM_INSERT, system_rows), (gt, GPU_INSERT, gpu_rows)]
        typed_columns = [column_types(table, columns) for table, columns, _ in parts]
        for _ in range(repeats):
            t0 = time.perf_counter()
            with conn.transaction(), conn.cursor() as cur:
                for (table, columns, rows), typed in zip(parts, typed_columns, strict=True):
                    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN{fmt}") as copy:
                        if binary:
                            copy.set_types(typed)
                        for row in rows:
                            copy.write_row(row)
            times.append(time.perf_counter() - t0)
            # The next repeat, and the API phase, start from the same (empty) tables.
            conn.execute(f"TRUNCATE {st}, {gt}")
    rows = len(system_rows) + len(gpu_rows)
    return {"seconds": median(times), "samples": len(system_rows), "rows": rows, "repeats": repeats, "binary": binary}


# --- 2. where the time goes, in-process -------------------------------------------------------


def breakdown(windows: int, batches: int) -> dict:
    """Milliseconds per batch of ``windows`` samples for each stage, medians over ``batches``.

    Each batch goes through Django's whole stack (test client: middleware, ninja, auth, reply);
    parse_batch and store_batch are timed inside those same requests by wrapping them.
    """
    from django.db import connection
    from django.test import Client

    from dashboard.fleet import api as fleet_api
    from dashboard.fleet.models import GpuSample, Machine, SystemSample

    try:
        from dashboard.core.process import tune_gc
    except ImportError:  # BENCH_ROOT is a checkout from before it
        pass
    else:
        tune_gc()  # as the web workers do (dashboard/wsgi.py)

    machine = Machine.objects.create(name="bench-profile")
    token = machine.issue_token()
    client = Client()
    current = {"validate": 0.0, "store": 0.0, "store_sql": 0.0}
    real_parse, real_store = fleet_api.parse_batch, fleet_api.store_batch

    def parse(body):
        t0 = time.perf_counter()
        try:
            return real_parse(body)
        finally:
            current["validate"] += time.perf_counter() - t0

    in_store = [False]

    def store(machine, batch, *args, **kwargs):
        t0 = time.perf_counter()
        in_store[0] = True
        try:
            return real_store(machine, batch, *args, **kwargs)
        finally:
            in_store[0] = False
            current["store"] += time.perf_counter() - t0

    def timing_wrapper(execute, sql, params, many, context):
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            if in_store[0]:
                current["store_sql"] += time.perf_counter() - t0

    out: dict[str, list[float]] = {k: [] for k in ("encode", "validate", "store", "store_sql", "django_full")}
    seq = 1
    fleet_api.parse_batch, fleet_api.store_batch = parse, store
    try:
        with connection.execute_wrapper(timing_wrapper):
            for i in range(batches + 1):
                batch = make_batch(range(seq, seq + windows), time.time(), gpus=GPUS, inventory=(i == 0))
                seq += windows
                t0 = time.perf_counter()
                body = json.dumps(batch).encode()
                encode = time.perf_counter() - t0
                for k in current:
                    current[k] = 0.0
                t0 = time.perf_counter()
                resp = client.post(
                    "/api/v1/ingest", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
                )
                full = time.perf_counter() - t0
                assert resp.status_code == 200, resp.content
                if i == 0:
                    continue  # the first request imports the URL conf and carries the inventory
                out["encode"].append(encode)
                out["django_full"].append(full)
                for k, v in current.items():
                    out[k].append(v)
    finally:
        fleet_api.parse_batch, fleet_api.store_batch = real_parse, real_store
    SystemSample.objects.filter(machine=machine).delete()
    GpuSample.objects.filter(machine=machine).delete()
    machine.delete()
    connection.close()
    return {k: median(v) * 1000 for k, v in out.items()}


# --- 3. the HTTP API --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gunicorn(url: str, port: int, workers: int, worker_class: str = "sync", threads: int = 1) -> subprocess.Popen:
    gunicorn = Path(sys.executable).with_name("gunicorn")
    proc = subprocess.Popen(
        [
            str(gunicorn),
            "dashboard.wsgi",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{port}",
            "--worker-class",
            worker_class,
            "--threads",
            str(threads),
            "--log-level",
            "warning",
            "--timeout",
            "60",
        ],
        cwd=ROOT,
        env=bench_env(url, ALLOWED_HOSTS="127.0.0.1"),
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/api/v1/machines")
            conn.getresponse().read()
            conn.close()
            return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("gunicorn did not answer within 30 s")


def stop_gunicorn(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()  # the master stops its workers
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_SAMPLE_JSON: dict[int, str] = {}


def batch_body(seqs: range, now: float, inventory: bool) -> bytes:
    """``json.dumps(make_batch(...))`` at a fraction of the CPU, so the clients leave the shared cores
    to the server: each sample's JSON is built once per utilisation (make_batch's only value that
    varies, besides seq and ts) and seq and ts are filled in."""
    if inventory:
        return json.dumps(make_batch(seqs, now, gpus=GPUS, inventory=True)).encode()
    parts = []
    for i, seq in enumerate(seqs):
        util = (seq * 7) % 100
        if util not in _SAMPLE_JSON:
            text = json.dumps(make_sample(0, 0.0, gpus=GPUS, util=util))
            _SAMPLE_JSON[util] = text.replace('"seq": 0,', '"seq": %d,', 1).replace('"ts": 0.0,', '"ts": %r,', 1)
        parts.append(_SAMPLE_JSON[util] % (seq, now - 10 * (len(seqs) - 1 - i)))
    return (
        '{"agent_version": "0.1.0", "dropped": 0, "inventory": null, "samples": [' + ", ".join(parts) + "]}"
    ).encode()


class AgentClient(threading.Thread):
    """Posts batches for its machines in turn over one keep-alive http.client connection."""

    def __init__(
        self,
        port: int,
        machines: list[tuple[int, str]],
        windows: int,
        start: threading.Event,
        stop: threading.Event,
        next_seq: dict[int, int],
    ):
        super().__init__(daemon=True)
        self.port, self.machines, self.windows = port, machines, windows
        self.start_evt, self.stop_evt = start, stop
        # Shared across runs (each machine belongs to one client), so a later run sends new windows.
        self.next_seq = next_seq
        for mid, _ in machines:
            next_seq.setdefault(mid, 1)
        self.latencies: list[float] = []
        self.accepted = 0
        self.requests = 0
        self.errors: list[str] = []
        self.ready = threading.Event()
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.connects = 0
        connect = self.conn.connect

        def counted_connect() -> None:
            self.connects += 1
            connect()

        self.conn.connect = counted_connect  # type: ignore[method-assign]

    def post(self, mid: int, token: str, inventory: bool) -> tuple[float, int]:
        seq = self.next_seq[mid]
        self.next_seq[mid] = seq + self.windows
        body = batch_body(range(seq, seq + self.windows), time.time(), inventory)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        t0 = time.perf_counter()
        try:
            self.conn.request("POST", "/api/v1/ingest", body, headers)
            resp = self.conn.getresponse()
            data = resp.read()
        except (http.client.HTTPException, OSError):
            # Sync gunicorn workers close the connection after each reply: reconnect, once.
            self.conn.close()
            self.conn.request("POST", "/api/v1/ingest", body, headers)
            resp = self.conn.getresponse()
            data = resp.read()
        elapsed = time.perf_counter() - t0
        if resp.status != 200:
            self.errors.append(f"{resp.status} {data[:200]!r}")
            return elapsed, 0
        return elapsed, json.loads(data)["accepted"]

    def run(self) -> None:
        try:
            for mid, token in self.machines:  # warm-up: the first batch of an agent carries inventory
                self.post(mid, token, inventory=True)
            self.ready.set()
            self.start_evt.wait()
            i = 0
            while not self.stop_evt.is_set():
                mid, token = self.machines[i % len(self.machines)]
                i += 1
                elapsed, accepted = self.post(mid, token, inventory=False)
                if self.stop_evt.is_set():
                    break  # finished after the window closed: not counted
                self.latencies.append(elapsed)
                self.accepted += accepted
                self.requests += 1
        except Exception as exc:  # reported, not raised: one client must not hang the others
            self.errors.append(repr(exc))
            self.ready.set()
        finally:
            self.conn.close()


NEXT_SEQ: dict[int, int] = {}


def cpu_seconds(servers: list[subprocess.Popen]) -> dict[str, float]:
    """CPU seconds used so far by the gunicorn processes, PostgreSQL's and this process (the
    clients): where a request's CPU goes, which is what bounds the API on a 2-core machine."""
    import psutil

    out = {"gunicorn": 0.0, "postgres": 0.0, "clients": time.process_time()}
    pids = set()
    for proc in servers:
        try:
            root = psutil.Process(proc.pid)
            pids.update(p.pid for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            pass
    for p in psutil.process_iter(["name", "cpu_times"]):
        group = "gunicorn" if p.pid in pids else "postgres" if p.info["name"] in ("postgres", "postmaster") else None
        if group and p.info["cpu_times"] is not None:
            out[group] += p.info["cpu_times"].user + p.info["cpu_times"].system
    return out


def worker_rss_mib(servers: list[subprocess.Popen]) -> float:
    """The largest resident memory of the gunicorn workers (the master's children), MiB: what the
    garbage collector's tuning (dashboard.core.process) costs in memory shows here."""
    import psutil

    largest = 0
    for proc in servers:
        try:
            largest = max([largest, *(p.memory_info().rss for p in psutil.Process(proc.pid).children())])
        except psutil.Error:
            pass
    return largest / 2**20


def api_run(
    ports: list[int],
    machines: list[tuple[int, str]],
    clients: int,
    windows: int,
    seconds: float,
    servers: list[subprocess.Popen] | None = None,
) -> dict:
    """``clients`` threads post for ``seconds``; with several ports (replicas), client i uses port
    i mod n: the balancing a load balancer would do, without a proxy's CPU on the cores measured."""
    start, stop = threading.Event(), threading.Event()
    groups = [machines[i::clients] for i in range(clients)]
    threads = [AgentClient(ports[i % len(ports)], g, windows, start, stop, NEXT_SEQ) for i, g in enumerate(groups) if g]
    for t in threads:
        t.start()
    for t in threads:
        t.ready.wait(timeout=120)
    cpu0, t0 = cpu_seconds(servers or []), time.perf_counter()
    start.set()
    try:
        time.sleep(seconds)
    finally:
        stop.set()
    elapsed = time.perf_counter() - t0
    cpu1 = cpu_seconds(servers or [])
    cpu = {group: cpu1[group] - cpu0[group] for group in cpu0}
    for t in threads:
        t.join(timeout=70)
    latencies = [x for t in threads for x in t.latencies]
    errors = [e for t in threads for e in t.errors]
    return {
        "seconds": elapsed,
        "requests": sum(t.requests for t in threads),
        "samples": sum(t.accepted for t in threads),
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "client_cpu": cpu["clients"],
        "cpu": cpu,
        "connects": sum(t.connects for t in threads),
        "errors": errors,
        "rss_mib": worker_rss_mib(servers or []),
    }


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the clients post (default 30)")
    parser.add_argument("--machines", type=int, default=20, help="machines enrolled (default 20)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (default 8)")
    parser.add_argument("--windows", type=int, default=10, help="samples per batch (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument(
        "--worker-class", default="sync", choices=["sync", "gthread"], help="gunicorn worker class (default sync)"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads per gthread worker (default 1)")
    parser.add_argument(
        "--replicas",
        default="1",
        help="web replicas to measure in turn, e.g. 1,2: that many gunicorn instances of --workers each (default 1)",
    )
    parser.add_argument(
        "--copy-windows", type=int, default=1000, help="samples per machine in the COPY baseline (default 1000)"
    )
    parser.add_argument("--copy-repeats", type=int, default=3, help="COPY baseline repeats, median taken (default 3)")
    parser.add_argument(
        "--database", default=DB_NAME, help=f"PostgreSQL database to create and drop (default {DB_NAME})"
    )
    parser.add_argument(
        "--profile-batches", type=int, default=40, help="batches timed in the in-process breakdown (default 40)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)

    server = f"{args.workers} {args.worker_class} workers" + (
        f" x {args.threads} threads" if args.worker_class == "gthread" else ""
    )
    gunicorn = None
    try:
        with bench_database(args.database) as url:
            setup_django(url)
            say(f"project: {ROOT}")
            machines = enroll(args.machines)
            say(f"enrolled {len(machines)} machines")

            ids = [m for m, _ in machines]
            copy = copy_baseline(url, ids, args.copy_windows, args.copy_repeats)
            say(
                f"COPY: {copy['rows']:,} rows ({copy['samples']:,} samples) in {copy['seconds']:.2f} s (median of {copy['repeats']})"
            )
            copy_bin = copy_baseline(url, ids, args.copy_windows, args.copy_repeats, binary=True)
            say(f"binary COPY: the same rows in {copy_bin['seconds']:.2f} s (median of {copy_bin['repeats']})")

            prof = breakdown(args.windows, args.profile_batches)
            say("in-process breakdown done")

            runs: list[tuple[int, dict]] = []  # (replicas, result), in the order run
            for replicas in [int(n) for n in args.replicas.split(",")]:
                ports = [free_port() for _ in range(replicas)]
                servers: list[subprocess.Popen] = []
                try:
                    for port in ports:
                        servers.append(start_gunicorn(url, port, args.workers, args.worker_class, args.threads))
                    say(f"{replicas} x gunicorn ({server}) on {ports}; {args.clients} clients for {args.seconds:.0f} s")
                    runs.append((replicas, api_run(ports, machines, args.clients, args.windows, args.seconds, servers)))
                finally:  # before the database is dropped
                    for proc in servers:
                        stop_gunicorn(proc)
            api = runs[0][1]

            from django.db import connection

            from dashboard.fleet.models import GpuSample, SystemSample

            stored = SystemSample.objects.count()
            stored_gpu = GpuSample.objects.count()

            # The baseline again, after the API phase, from the same empty tables: this VM's speed
            # drifts by 10-30 % within minutes (bench/README.md), so the ratio divides by the mean
            # of the COPY before and after the API run rather than by one of them.
            with connection.cursor() as cursor:
                cursor.execute(f"TRUNCATE {SystemSample._meta.db_table}, {GpuSample._meta.db_table}")
            copy_after = copy_baseline(url, ids, args.copy_windows, args.copy_repeats)
            copy_bin_after = copy_baseline(url, ids, args.copy_windows, args.copy_repeats, binary=True)
            say(
                f"COPY after the API phase: text {copy_after['seconds']:.2f} s, binary {copy_bin_after['seconds']:.2f} s"
            )

        def rate(before: dict, after: dict) -> float:  # rows/s, the mean of the two measurements
            return (before["rows"] / before["seconds"] + after["rows"] / after["seconds"]) / 2

        copy_rows_s, copy_bin_rows_s = rate(copy, copy_after), rate(copy_bin, copy_bin_after)

        api_rows_s = api["samples"] * ROWS_PER_SAMPLE / api["seconds"]
        print()
        print(
            f"Ingest, {GPUS} GPUs per machine; API: {args.clients} clients, {args.windows} windows a batch, "
            f"gunicorn {server}, {api['seconds']:.0f} s"
        )
        print(
            table(
                [
                    [
                        f"COPY (one transaction; mean of before and after, median of {copy['repeats']} each)",
                        f"{copy_rows_s:,.0f}",
                        f"{copy_rows_s / ROWS_PER_SAMPLE:,.0f}",
                        "",
                        "",
                        "100%",
                    ],
                    [
                        "binary COPY (the same)",
                        f"{copy_bin_rows_s:,.0f}",
                        f"{copy_bin_rows_s / ROWS_PER_SAMPLE:,.0f}",
                        "",
                        "",
                        f"{copy_bin_rows_s / copy_rows_s:.0%}",
                    ],
                    [
                        "HTTP API",
                        f"{api_rows_s:,.0f}",
                        f"{api['samples'] / api['seconds']:,.0f}",
                        f"{api['p50'] * 1000:.1f}",
                        f"{api['p99'] * 1000:.1f}",
                        f"{api_rows_s / copy_rows_s:.0%}",
                    ],
                ],
                ["path", "rows/s", "samples/s", "p50 ms", "p99 ms", "of COPY"],
            )
        )
        print(f"HTTP API against the binary COPY: {api_rows_s / copy_bin_rows_s:.0%}")
        print(
            "COPY rows/s before / after the API phase: text "
            f"{copy['rows'] / copy['seconds']:,.0f} / {copy_after['rows'] / copy_after['seconds']:,.0f}, binary "
            f"{copy_bin['rows'] / copy_bin['seconds']:,.0f} / {copy_bin_after['rows'] / copy_bin_after['seconds']:,.0f}"
        )
        print(
            f"requests: {api['requests']:,} ({api['requests'] / api['seconds']:.1f}/s), samples accepted: {api['samples']:,}, "
            f"errors: {len(api['errors'])}; rows in the database afterwards: {stored:,} system + {stored_gpu:,} GPU "
            f"(includes warm-up batches)"
        )
        print(
            f"client threads used {api['client_cpu'] / api['seconds']:.0%} of a core (same 2 cores as the server); "
            f"TCP connections opened: {api['connects']:,} (warm-up included)"
        )
        per_request = {g: 1000 * v / max(1, api["requests"]) for g, v in api["cpu"].items()}
        print(
            "CPU per request (ms, all cores; the run's requests include the ones cut off at the end): "
            + ", ".join(f"{g} {v:.2f}" for g, v in per_request.items())
            + f"; {sum(per_request.values()):.2f} in all; largest gunicorn worker at the end: {api['rss_mib']:.0f} MiB"
        )
        for e in api["errors"][:5]:
            print(f"  error: {e}")
        if len(runs) > 1:
            first = runs[0][0]
            # Each run against the mean of the runs with the first count (interleave them: 1,2,1,2).
            same = [r["samples"] / r["seconds"] for n, r in runs if n == first]
            base_rate = sum(same) / len(same)
            print()
            print(f"Web replicas, same run ({args.workers} {args.worker_class} workers each, {args.clients} clients):")
            print(
                table(
                    [
                        [
                            str(n),
                            f"{r['samples'] * ROWS_PER_SAMPLE / r['seconds']:,.0f}",
                            f"{r['samples'] / r['seconds']:,.0f}",
                            f"{r['p50'] * 1000:.1f}",
                            f"{r['p99'] * 1000:.1f}",
                            f"{r['samples'] * ROWS_PER_SAMPLE / r['seconds'] / copy_rows_s:.0%}",
                            f"{(r['samples'] / r['seconds']) / base_rate:.2f}x",
                        ]
                        for n, r in runs
                    ],
                    ["replicas", "rows/s", "samples/s", "p50 ms", "p99 ms", "of COPY", f"vs {first}"],
                )
            )
        total = prof["django_full"]
        print()
        print(
            f"Where a batch's time goes ({args.windows} samples x {GPUS} GPUs, in-process, median of {args.profile_batches}):"
        )
        print(
            table(
                [
                    ["JSON encode (agent side)", f"{prof['encode']:.2f}", ""],
                    ["pydantic parse + validate", f"{prof['validate']:.2f}", f"{prof['validate'] / total:.0%}"],
                    [
                        "store_batch: cursor.execute() calls",
                        f"{prof['store_sql']:.2f}",
                        f"{prof['store_sql'] / total:.0%}",
                    ],
                    [
                        "store_batch: the rest (rows in Python, COPY stream, commit)",
                        f"{prof['store'] - prof['store_sql']:.2f}",
                        f"{(prof['store'] - prof['store_sql']) / total:.0%}",
                    ],
                    [
                        "rest of Django (auth, middleware, ninja, reply)",
                        f"{total - prof['validate'] - prof['store']:.2f}",
                        f"{(total - prof['validate'] - prof['store']) / total:.0%}",
                    ],
                    ["whole request (test client)", f"{total:.2f}", "100%"],
                ],
                ["stage", "ms/batch", "share"],
            )
        )
        return 0
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        return 130
    finally:
        stop_gunicorn(gunicorn)


if __name__ == "__main__":
    sys.exit(main())
