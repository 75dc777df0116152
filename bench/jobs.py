#!/usr/bin/env python3
"""Jobs: submit-to-running latency over the hosts' HTTPS channel against a bare Celery round trip,
and placement throughput.

    .venv/bin/python bench/jobs.py [--jobs 30] [--roundtrips 200] [--machines 100] [--queued 1000]
                                   [--passes 3]

1. Creates and migrates its own PostgreSQL database (hwdash_bench_jobs) and a data folder; starts
   gunicorn (2 workers x 16 threads, as docker-compose runs it, DEBUG=0) and the dashboard's
   Celery worker (`celery -A dashboard worker`, prefork with 2 processes, no beat), both with
   REDIS_URL=redis://127.0.0.1:6379/10; enrolls one machine whose telemetry a thread in this
   script sends through the ingest API every 10 s (8 GPUs, like conftest.make_batch), and starts
   a real `python -m hwprobe worker` for it (no policy file: built-in workloads only). The worker
   long-polls `POST /api/v1/agent/jobs/next`; placement wakes it over Redis pub/sub.
2. Baseline, with all of that running: a bare Celery round trip over the same Redis (a tiny app
   of this script with a Redis result backend, its own queue `bench.noop`, a worker with
   `--pool solo`), `noop.delay().get()` --roundtrips times.
3. Submit-to-running: --jobs jobs of `python -m hwprobe.workloads train --seconds 1` (gpus 0),
   one at a time through `POST /api/v1/jobs` with an operator's personal API token, each waited
   for to the end before the next. Latency = the job's `started_at` (set when the long-poll takes
   it for the worker) minus the moment the POST returned; the job's other timestamps split it into
   hops.
4. Placement throughput, in this process on the same database (services stopped): --machines
   machines online with telemetry (8 x 80 GiB GPUs, varied free memory), --queued queued jobs of
   varied GPUs / memory / priority; `placement.place_queued()` timed --passes times, the jobs reset
   to queued in between; SQL counted and timed, and one more pass under cProfile.

Prints a table per phase. Processes, the database and Redis db 10 are cleaned up at the end,
Ctrl-C included.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import json
import os
import pstats
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    PYTHON,
    ROOT,
    bench_database,
    bench_env,
    make_batch,
    median,
    percentile,
    say,
    setup_django,
    table,
)

DB_NAME = "hwdash_bench_jobs"
REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/10")
NOOP_QUEUE = "bench.noop"
MACHINE = "bench-gpu-01"
GIB = 2**30
WORKLOAD = ["python", "-m", "hwprobe.workloads", "train", "--seconds", "1"]


def _sigterm(signum, frame):
    raise KeyboardInterrupt


# --- the bare Celery round trip ---------------------------------------------------------------


def noop_app():
    """A Celery app of this bench only: one no-op task on its own queue, results in Redis."""
    from celery import Celery

    app = Celery("bench_noop", broker=REDIS_URL, backend=REDIS_URL, set_as_current=False, fixups=[])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=NOOP_QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="bench.noop")
    def noop():
        return None

    return app


def roundtrips(n: int) -> list[float]:
    app = noop_app()
    noop = app.tasks["bench.noop"]
    for _ in range(10):  # warm-up: connections, first-call imports
        noop.delay().get(timeout=30)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        noop.delay().get(timeout=30)
        out.append(time.perf_counter() - t0)
    app.close()
    return out


# --- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child in its own session (Ctrl-C does not reach it), output to a file, stopped by group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            if text in self.output():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not say {text!r} within {timeout:.0f} s:\n{self.output()[-3000:]}")

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own group: workers, pool children
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def http_json(port: int, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, dict | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        raw = None if body is None else json.dumps(body).encode()
        conn.request(method, path, raw, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data) if data else None
    except ValueError:
        return resp.status, {"raw": data[:300].decode(errors="replace")}


class Telemetry(threading.Thread):
    """The machine's agent, as far as the server can tell: a batch every ``every`` s."""

    def __init__(self, port: int, token: str, every: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.port, self.token, self.every = port, token, every
        self.stop_evt = threading.Event()
        self.seq = 1
        self.errors: list[str] = []

    def send(self, inventory: bool) -> None:
        status, body = http_json(
            self.port,
            "POST",
            "/api/v1/ingest",
            self.token,
            make_batch([self.seq], time.time(), gpus=8, inventory=inventory),
        )
        self.seq += 1
        if status != 200:
            self.errors.append(f"{status} {body}")

    def run(self) -> None:
        while not self.stop_evt.wait(self.every):
            try:
                self.send(False)
            except OSError as exc:
                self.errors.append(repr(exc))


# --- 2. submit-to-running ---------------------------------------------------------------------

LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")


def log_events(text: str, needle: str) -> list[tuple[float, str]]:
    """(epoch seconds, line) of the log lines containing ``needle``; asctime is local, to the ms."""
    out = []
    for line in text.splitlines():
        if needle in line:
            m = LOG_TIME.search(line)
            if m:
                out.append((time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000, line))
    return out


def add_log_times(runs: list[dict], celery_log: str, worker_log: str) -> None:
    """Per job: when the dashboard worker got the place task and the machine's worker got the job.

    From the two workers' own log lines (millisecond timestamps): the place task received last
    before the job's placed_at, the worker's "job N attempt 1 taken" line (the long-poll's answer
    read) and its "job N attempt 1 started: pid" line (written once the command is spawned).
    """
    place, place_done = [], {}
    for t, line in log_events(celery_log, "dashboard.jobs.tasks.place["):
        task_id = line.split("dashboard.jobs.tasks.place[", 1)[1].split("]", 1)[0]
        if "received" in line:
            place.append((t, task_id))
        elif "succeeded" in line:
            place_done[task_id] = t
    taken = {}
    for t, line in log_events(worker_log, " taken"):
        m = re.search(r"job (\d+) attempt \d+ taken", line)
        if m:
            taken[int(m.group(1))] = t
    spawned = {}
    for t, line in log_events(worker_log, " started: pid "):
        m = re.search(r"job (\d+) attempt \d+ started", line)
        if m:
            spawned[int(m.group(1))] = t
    nan = float("nan")
    for r in runs:
        before = [(t, task_id) for t, task_id in place if t <= r["placed"] + 0.001]
        r["place_received"] = before[-1][0] if before else nan
        r["place_done"] = place_done.get(before[-1][1], nan) if before else nan
        r["taken"] = taken.get(r["id"], nan)
        r["spawned"] = spawned.get(r["id"], nan)


def submit_to_running(port: int, token: str, n: int, workers: list[Proc], warmup: int = 2) -> list[dict]:
    """``n`` jobs one after another (after ``warmup`` uncounted ones: first connections, imports)."""
    from dashboard.jobs.models import Job, JobLog

    body = {"name": "bench-train", "kind": "train", "command": WORKLOAD, "gpus": 0}
    out = []
    for i in range(warmup + n):
        t_sent = time.time()
        status, reply = http_json(port, "POST", "/api/v1/jobs", token, body)
        t_post = time.time()
        if status != 201:
            raise RuntimeError(f"POST /api/v1/jobs answered {status}: {reply}")
        job_id = reply["id"]
        deadline = time.monotonic() + 60
        seen_running = None
        while True:
            job = Job.objects.get(pk=job_id)
            if seen_running is None and job.started_at is not None:
                seen_running = time.time()
            if job.is_finished:
                break
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {w.name}\n{w.output()[-2000:]}" for w in workers)
                raise RuntimeError(f"job #{job_id} still {job.status} after 60 s ({job.status_message})\n{logs}")
            time.sleep(0.02)
        first_log = JobLog.objects.filter(job_id=job_id).order_by("ts").values_list("ts", flat=True).first()
        if job.status != Job.Status.SUCCEEDED or job.started_at is None:
            raise RuntimeError(f"job #{job_id} ended {job.status}: {job.status_message}")
        ts = lambda d: d.timestamp() if d else float("nan")  # noqa: E731
        out.append(
            {
                "id": job_id,
                "sent": t_sent,
                "post": t_post,
                "created": ts(job.created_at),
                "placed": ts(job.placed_at),
                "started": ts(job.started_at),
                "beat": ts(job.heartbeat_at),
                "first_log": ts(first_log),
                "finished": ts(job.finished_at),
            }
        )
        if i + 1 - warmup > 0 and (i + 1 - warmup) % 10 == 0:
            say(f"  {i + 1 - warmup}/{n} jobs done")
        time.sleep(0.3)  # let the placement task that `finish` queued run before the next submit
    return out[warmup:]


def agent_call_ms(port: int, token: str, n: int = 50) -> float:
    """One authenticated agent HTTP call (GET /api/v1/agent/config), median ms: the claim's floor."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, _ = http_json(port, "GET", "/api/v1/agent/config", token)
        times.append(time.perf_counter() - t0)
        assert status == 200
    return median(times) * 1000


def one_job_pass_ms(owner, machine, n: int = 20) -> tuple[float, float]:
    """place_queued() with one queued job (gpus 0) and this one machine online, and the wake-up
    (wakeup.notify: one Redis PUBLISH); median ms."""
    from django.utils import timezone

    from dashboard.fleet.models import MachineState
    from dashboard.jobs import placement
    from dashboard.jobs.models import Job, JobAttempt

    MachineState.objects.update_or_create(machine_id=machine.pk, defaults={"last_seen_at": timezone.now()})
    job = Job.objects.create(owner=owner, name="one", kind="train", argv=WORKLOAD, gpus=0)
    times = []
    for _ in range(n + 1):
        Job.objects.filter(pk=job.pk).update(
            status=Job.Status.QUEUED, machine=None, attempt=0, placed_at=None, status_message="waiting for placement"
        )
        JobAttempt.objects.filter(job=job).delete()
        t0 = time.perf_counter()
        placed = placement.place_queued()
        times.append(time.perf_counter() - t0)
        assert len(placed) == 1, placed
    # The wake-up of the machine's long-poll: one PUBLISH on Redis (nobody listens now).
    from dashboard.jobs import wakeup

    sends = []
    for _ in range(n + 1):
        t0 = time.perf_counter()
        wakeup.notify([machine.pk])
        sends.append(time.perf_counter() - t0)
    job.delete()
    return median(times[1:]) * 1000, median(sends[1:]) * 1000


# --- 3. placement throughput ------------------------------------------------------------------


def seed_fleet(owner, machines: int, queued: int, seed: int = 7) -> list[int]:
    """``machines`` online 8 x 80 GiB machines with varied free memory, ``queued`` queued jobs."""
    from django.utils import timezone

    from dashboard.fleet.models import Accelerator, Machine, MachineState
    from dashboard.jobs.models import Job

    rng = random.Random(seed)
    now = timezone.now()
    total = 85520809984
    fleet = []
    for i in range(machines):
        used = [rng.choice([0.5, 0.5, 2, 10, 20, 40, 60, 75, 79]) * GIB for _ in range(8)]
        latest = {
            "seq": 1,
            "ts": now.timestamp(),
            "system": {},
            "gpus": [
                {
                    "index": g,
                    "uuid": f"GPU-{i:03d}-{g}",
                    "mem_total_bytes": total,
                    "mem_used_bytes": u,
                    "util_percent": 50.0,
                    "processes": [],
                }
                for g, u in enumerate(used)
            ],
        }
        policy = Machine.Policy.DEDICATED if i % 10 == 0 else Machine.Policy.SHARED
        fleet.append(Machine(name=f"place-{i:03d}", last_seen_at=now, latest=latest, policy=policy))
    fleet = Machine.objects.bulk_create(fleet)
    MachineState.objects.bulk_create([m.hot.summarised() for m in fleet])  # last_seen_at and latest live there
    Accelerator.objects.bulk_create(
        [
            Accelerator(
                machine=m,
                index=g,
                vendor="nvidia",
                name="NVIDIA H100 80GB HBM3",
                uuid=f"GPU-{i:03d}-{g}",
                mem_total_bytes=total,
            )
            for i, m in enumerate(fleet)
            for g in range(8)
        ]
    )
    jobs = []
    for j in range(queued):
        gpus = rng.choices([0, 1, 2, 4, 8], weights=[10, 40, 20, 15, 15])[0]
        jobs.append(
            Job(
                owner=owner,
                name=f"queued-{j}",
                kind=rng.choices(["train", "serve"], weights=[75, 25])[0],
                argv=WORKLOAD,
                gpus=gpus,
                gpu_memory_gb=rng.choice([0, 4, 8, 16, 24, 40, 70]) if gpus else 0,
                priority=rng.choice([-5, 0, 0, 0, 5, 10]),
                preemptible=False,
                target=fleet[rng.randrange(machines)] if rng.random() < 0.05 else None,
                created_at=now - timedelta(seconds=queued - j),
                status=Job.Status.QUEUED,
                status_message="waiting for placement",
            )
        )
    return [j.pk for j in Job.objects.bulk_create(jobs)]


def reset(job_ids: list[int], machine_names_prefix: str = "place-") -> None:
    from django.utils import timezone

    from dashboard.fleet.models import MachineState
    from dashboard.jobs.models import Job, JobAttempt

    JobAttempt.objects.filter(job_id__in=job_ids).delete()
    Job.objects.filter(pk__in=job_ids).update(
        status=Job.Status.QUEUED,
        machine=None,
        assigned_gpus=[],
        attempt=0,
        placed_at=None,
        status_message="waiting for placement",
        preempt_requested=False,
    )
    MachineState.objects.filter(machine__name__startswith=machine_names_prefix).update(last_seen_at=timezone.now())


def placement_passes(job_ids: list[int], passes: int) -> dict:
    from django.db import connection

    from dashboard.jobs import placement
    from dashboard.jobs.models import Job

    sql = {"n": 0, "s": 0.0}

    def wrapper(execute, query, params, many, context):
        t0 = time.perf_counter()
        try:
            return execute(query, params, many, context)
        finally:
            sql["n"] += 1
            sql["s"] += time.perf_counter() - t0

    runs = []
    for _ in range(passes):
        reset(job_ids)
        sql.update(n=0, s=0.0)
        with connection.execute_wrapper(wrapper):
            t0 = time.perf_counter()
            placed = placement.place_queued()
            elapsed = time.perf_counter() - t0
        runs.append({"s": elapsed, "placed": len(placed), "queries": sql["n"], "sql_s": sql["s"]})
    waiting = Job.objects.filter(pk__in=job_ids, status=Job.Status.QUEUED).count()
    gpus_placed = sum(
        len(g)
        for g in Job.objects.filter(pk__in=job_ids, status=Job.Status.PLACED).values_list("assigned_gpus", flat=True)
    )
    # A second pass right after (nothing freed): the cost of a beat tick over a queue that waits.
    sql.update(n=0, s=0.0)
    with connection.execute_wrapper(wrapper):
        t0 = time.perf_counter()
        again = placement.place_queued()
        idle = {"s": time.perf_counter() - t0, "placed": len(again), "queries": sql["n"], "sql_s": sql["s"]}
    # One more pass under cProfile.
    reset(job_ids)
    prof = cProfile.Profile()
    prof.enable()
    placement.place_queued()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
    return {"runs": runs, "waiting": waiting, "gpus_placed": gpus_placed, "idle": idle, "profile": buf.getvalue()}


# --- main -------------------------------------------------------------------------------------


def flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def stop_all(procs: list[Proc], telemetry: Telemetry | None) -> None:
    """Stop the children, the machine's worker before the server it reports to; idempotent."""
    if telemetry is not None:
        telemetry.stop_evt.set()
    while procs:
        procs[-1].stop()
        procs.pop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=30, help="jobs submitted one at a time (default 30)")
    parser.add_argument("--roundtrips", type=int, default=200, help="bare Celery round trips (default 200)")
    parser.add_argument("--machines", type=int, default=100, help="machines for the placement pass (default 100)")
    parser.add_argument("--queued", type=int, default=1000, help="queued jobs for the placement pass (default 1000)")
    parser.add_argument("--passes", type=int, default=3, help="timed placement passes (default 3)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)

    procs: list[Proc] = []
    telemetry: Telemetry | None = None
    data = Path(tempfile.mkdtemp(prefix="hwdash-bench-jobs-"))
    try:
        flush_redis()
        with bench_database(DB_NAME) as url:
            try:
                env = bench_env(
                    url,
                    REDIS_URL=REDIS_URL,
                    DASHBOARD_DATA_DIR=str(data / "dashboard"),
                    ALLOWED_HOSTS="127.0.0.1,localhost,testserver",
                )
                # Kept by setup_django (it only adds): this process's Celery app publishes to Redis too.
                os.environ.update(REDIS_URL=REDIS_URL, DASHBOARD_DATA_DIR=str(data / "dashboard"))
                setup_django(url)
                from django.contrib.auth.models import Group, User

                from dashboard.accounts.models import ApiToken
                from dashboard.fleet.models import Machine, MachineState

                user = User.objects.create_user("bench-operator", password=None)
                user.groups.add(Group.objects.get_or_create(name="operator")[0])
                user_token = ApiToken.issue(user, "bench")
                machine = Machine.objects.create(name=MACHINE)
                agent_token = machine.issue_token("bench")

                # --- services
                port = free_port()
                gunicorn = Path(PYTHON).with_name("gunicorn")
                procs.append(
                    Proc(
                        "gunicorn",
                        [
                            str(gunicorn),
                            "dashboard.wsgi",
                            "--workers",
                            "2",
                            "--threads",
                            "16",  # as docker-compose: each host's long-poll holds a thread
                            "--bind",
                            f"127.0.0.1:{port}",
                            "--log-level",
                            "info",
                            "--timeout",
                            "60",
                        ],
                        env,
                        data / "gunicorn.log",
                    )
                )
                procs[-1].wait_for("Booting worker", 30)
                for _ in range(100):
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                        break
                    except OSError:
                        time.sleep(0.1)
                procs.append(
                    Proc(
                        "celery (dashboard)",
                        [
                            PYTHON,
                            "-m",
                            "celery",
                            "-A",
                            "dashboard",
                            "worker",
                            "--concurrency",
                            "2",
                            "--loglevel",
                            "INFO",
                        ],
                        env,
                        data / "celery.log",
                    )
                )
                telemetry = Telemetry(port, agent_token)
                telemetry.send(inventory=True)
                telemetry.start()
                # A machine has no Django: nothing of the server's configuration reaches the worker.
                worker_env = {
                    k: v for k, v in env.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL")
                }
                worker_env["HWPROBE_STATE_DIR"] = str(data / "hwprobe")
                procs.append(
                    Proc(
                        "hwprobe worker",
                        [
                            PYTHON,
                            "-m",
                            "hwprobe",
                            "worker",
                            "--server",
                            f"http://127.0.0.1:{port}",
                            "--token",
                            agent_token,
                            "--jobs-dir",
                            str(data / "jobs"),
                        ],
                        worker_env,
                        data / "hwprobe-worker.log",
                    )
                )
                noop_worker = Proc(
                    "celery (bench noop, solo)",
                    [
                        PYTHON,
                        "-c",
                        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from bench.jobs import noop_app; "
                        "noop_app().worker_main(['worker', '--pool', 'solo', '--loglevel', 'INFO', '--queues', "
                        f"{NOOP_QUEUE!r}, '--without-gossip', '--without-mingle', '--without-heartbeat'])",
                    ],
                    {**worker_env},
                    data / "noop-worker.log",
                )
                procs.append(noop_worker)
                for p in procs[1:]:
                    p.wait_for("ready", 60)
                say(
                    f"gunicorn on 127.0.0.1:{port} (2 workers x 16 threads), dashboard Celery worker (prefork 2), "
                    f"hwprobe worker for {MACHINE}, no-op worker (solo): all ready; Redis {REDIS_URL}"
                )

                # --- 1. baseline, with everything running
                base = roundtrips(args.roundtrips)
                say(
                    f"bare Celery round trip x{len(base)}: p50 {percentile(base, 50) * 1000:.2f} ms, "
                    f"p99 {percentile(base, 99) * 1000:.2f} ms"
                )
                agent_ms = agent_call_ms(port, agent_token)
                say(f"one agent HTTP call (GET /api/v1/agent/config): median {agent_ms:.2f} ms")

                # --- 2. submit-to-running
                t0 = time.perf_counter()
                runs = submit_to_running(port, user_token, args.jobs, procs)
                add_log_times(runs, procs[1].output(), procs[2].output())
                say(f"{len(runs)} jobs submitted and run in {time.perf_counter() - t0:.1f} s")
                if telemetry.errors:
                    say(f"telemetry errors: {telemetry.errors[:3]}")
                stop_all(procs, telemetry)
                flush_redis()

                one_ms, dispatch_ms = one_job_pass_ms(user, machine)
                # out of the next phase
                MachineState.objects.update_or_create(machine_id=machine.pk, defaults={"last_seen_at": None})

                # --- 3. placement throughput
                t0 = time.perf_counter()
                job_ids = seed_fleet(user, args.machines, args.queued)
                say(
                    f"seeded {args.machines} machines x 8 GPUs and {len(job_ids)} queued jobs in {time.perf_counter() - t0:.1f} s"
                )
                place = placement_passes(job_ids, args.passes)
            finally:  # before the database is dropped: the workers still talk to it
                stop_all(procs, telemetry)

        report(args, base, agent_ms, runs, one_ms, dispatch_ms, place)
        return 0
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        return 130
    finally:
        stop_all(procs, telemetry)
        try:
            flush_redis()
        except Exception as exc:  # noqa: BLE001 - cleanup must go on
            say(f"could not flush Redis: {exc}")
        shutil.rmtree(data, ignore_errors=True)


def report(
    args, base: list[float], agent_ms: float, runs: list[dict], one_ms: float, dispatch_ms: float, place: dict
) -> None:
    ms = lambda xs, p: percentile(xs, p) * 1000  # noqa: E731
    b50, b99 = ms(base, 50), ms(base, 99)
    lat = [r["started"] - r["post"] for r in runs]
    l50, l99 = ms(lat, 50), ms(lat, 99)
    print()
    print(
        f"Submit-to-running, {len(runs)} jobs one at a time (`{' '.join(WORKLOAD)}`, gpus 0), "
        f"bare round trip x{len(base)}, same run"
    )
    print(
        table(
            [
                ["bare Celery delay().get() over Redis (solo worker)", f"{b50:.2f}", f"{b99:.2f}", "1x"],
                [
                    "POST /api/v1/jobs returned -> started_at (taken by the host's long-poll: running)",
                    f"{l50:.1f}",
                    f"{l99:.1f}",
                    f"{l50 / b50:.1f}x / {l99 / b99:.1f}x",
                ],
                [
                    "POST returned -> first output line of the job",
                    f"{ms([r['first_log'] - r['post'] for r in runs], 50):.1f}",
                    f"{ms([r['first_log'] - r['post'] for r in runs], 99):.1f}",
                    "",
                ],
            ],
            ["path", "p50 ms", "p99 ms", "vs bare (p50 / p99)"],
        )
    )
    segments = [
        ("the POST itself (client: sent -> reply read)", "sent", "post"),
        ("  created_at (in the request) -> reply read by the client", "created", "post"),
        (
            "1  created_at -> place task received by the dashboard worker (on_commit, delay, Redis hop)",
            "created",
            "place_received",
        ),
        ("2  place task received -> placed_at (prefork child, task start, pass begins)", "place_received", "placed"),
        (
            "3  placed_at -> started_at (pass, commit, PUBLISH, the long-poll wakes and takes it: UPDATE)",
            "placed",
            "started",
        ),
        ("   3a placed_at -> place task logged succeeded (rest of the pass, commit, PUBLISH)", "placed", "place_done"),
        ("   sum 1-3: created_at -> started_at", "created", "started"),
        ("4  started_at -> the worker reads the answer (commit, spec, reply)", "started", "taken"),
        ("5  answer read -> spawned (thread, policy, Popen of the shim)", "taken", "spawned"),
        ("6  spawned -> first heartbeat stored (heartbeat HTTP)", "spawned", "beat"),
        ("7  spawned -> first output line (2 interpreters, numpy import, first print)", "spawned", "first_log"),
        ("   first output -> finished_at (the workload's own run, log flush, finish)", "first_log", "finished"),
    ]
    rows = []
    for name, a, b in segments:
        xs = [r[b] - r[a] for r in runs if r[b] == r[b] and r[a] == r[a]]  # NaN: not in the logs
        rows.append([name, f"{ms(xs, 50):.1f}", f"{ms(xs, 99):.1f}"])
    rows.append(["in-process place_queued(), 1 queued job, 1 machine (median of 20)", f"{one_ms:.1f}", ""])
    rows.append(
        ["in-process wakeup.notify() of that machine (a Redis PUBLISH, median of 20)", f"{dispatch_ms:.1f}", ""]
    )
    rows.append(["one agent HTTP call, GET /api/v1/agent/config (median of 50)", f"{agent_ms:.1f}", ""])
    print()
    print("Where it goes (timestamps of the same jobs; same clock, one host):")
    print(table(rows, ["segment", "p50 ms", "p99 ms"]))

    r = place["runs"]
    print()
    print(
        f"Placement: {args.queued} queued jobs over {args.machines} machines x 8 GPUs (80 GiB each), "
        f"one place_queued() pass, {len(r)} passes (jobs reset to queued in between)"
    )
    rows = []
    for i, run in enumerate(r, 1):
        rows.append(
            [
                f"pass {i}",
                f"{run['s'] * 1000:,.0f}",
                f"{run['placed']}",
                f"{args.queued - run['placed']}",
                f"{args.queued / run['s']:,.0f}",
                f"{run['placed'] / run['s']:,.0f}",
                f"{run['queries']:,}",
                f"{run['sql_s'] * 1000:,.0f}",
            ]
        )
    idle = place["idle"]
    rows.append(
        [
            "next pass, nothing freed (a beat tick)",
            f"{idle['s'] * 1000:,.0f}",
            f"{idle['placed']}",
            f"{place['waiting']}",
            f"{place['waiting'] / idle['s']:,.0f}",
            "",
            f"{idle['queries']:,}",
            f"{idle['sql_s'] * 1000:,.0f}",
        ]
    )
    print(table(rows, ["run", "ms/pass", "placed", "wait", "jobs considered/s", "placed/s", "SQL queries", "SQL ms"]))
    print(
        f"GPU assignments: {place['gpus_placed']} over {args.machines * 8} GPUs (jobs share a GPU while its memory lasts; "
        f"a job asking 0 GiB always fits); still queued after a pass: {place['waiting']}"
    )
    print()
    print("cProfile of one more pass (cumulative, top 25):")
    print(place["profile"])


if __name__ == "__main__":
    sys.exit(main())
