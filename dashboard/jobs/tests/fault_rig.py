"""A production-shaped rig for fault tests: real processes to kill, restart and wait for.

gunicorn (2 workers with threads, as in docker-compose), the dashboard's Celery worker and beat,
a private ``redis-server`` (no persistence, its own port: the shared Redis on 6379 is never
touched), and for one host its telemetry agent (``hwprobe run``) and job worker (``hwprobe
worker``). The database is the caller's (the test database, or bench/faults.py's own). Used by
test_faults.py and bench/faults.py; each process is in its own session, so a kill takes its
children too, and its output goes to a file for the failure message.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
PY = sys.executable

# Bounds short enough for a test, in the same ratio as the defaults (docs/design.md, Jobs).
FAST_BOUNDS = {
    "JOB_UNREACHABLE_AFTER_S": "4",
    "JOB_LOST_AFTER_S": "4",
    "JOB_SILENT_LOST_AFTER_S": "600",
    "JOB_CHECK_INTERVAL_S": "1",
    "JOB_POLL_WAIT_S": "10",
}
HOST_ONLY = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL")  # a host has none of the server's settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.2) -> Any:
    """The first truthy value of ``predicate()``; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Proc:
    """One child in a session of its own; output appended to ``log``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self, tail: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL to the whole group: a crash, nothing flushed."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout_s: float = 20) -> int | None:
        """SIGTERM to the process (it stops its own children), SIGKILL to the group after ``timeout_s``."""
        if not self.alive:
            return self.proc.returncode if self.proc else None
        assert self.proc is not None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


class RedisServer:
    """A private redis-server on a free port, nothing kept on disk (as docker-compose runs it)."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = Proc("redis", [*argv, "--dir", str(tmp)], dict(os.environ), tmp / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc.start()
        wait_until(lambda: port_open(self.port), 10, "redis-server to listen")

    def kill(self) -> None:
        self.proc.kill()


class Rig:
    """The server side and one host, started piece by piece; ``stop()`` ends whatever runs."""

    def __init__(self, base_env: dict[str, str], tmp: Path, redis: bool = True, **settings: str) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(tmp / "redis") if redis else None
        env = {k: v for k, v in base_env.items() if k != "REDIS_URL"}
        env.update(FAST_BOUNDS, DASHBOARD_DATA_DIR=str(tmp / "data"), PYTHONUNBUFFERED="1", **settings)
        if self.redis is not None:
            env["REDIS_URL"] = self.redis.url
        self.env = env
        self.port = free_port()
        host_env = {k: v for k, v in base_env.items() if k not in HOST_ONLY}
        self.host_env = {**host_env, "HWPROBE_STATE_DIR": str(tmp / "host-state"), "PYTHONUNBUFFERED": "1"}
        self.web = Proc(
            "web",
            [
                PY, "-m", "gunicorn", "dashboard.wsgi", "-b", f"127.0.0.1:{self.port}", "-w", "2",
                "--threads", "16", "--graceful-timeout", "5", "--log-level", "warning", "--access-logfile", "-",
            ],
            env,
            tmp / "web.log",
        )  # fmt: skip
        celery = [PY, "-m", "celery", "-A", "dashboard"]
        self.celery = Proc(
            "celery worker",
            [*celery, "worker", "--loglevel", "INFO", "--concurrency", "2", "--without-gossip", "--without-mingle"],
            env,
            tmp / "celery.log",
        )
        self.beat = Proc(
            "celery beat",
            [*celery, "beat", "--loglevel", "INFO", "--schedule", str(tmp / "celerybeat-schedule")],
            env,
            tmp / "beat.log",
        )
        self.agent: Proc | None = None
        self.worker: Proc | None = None
        self.agent_spool = tmp / "host-state" / "agent-spool.sqlite3"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- the server ------------------------------------------------------------------------------

    def start_server(self) -> None:
        if self.redis is not None:
            self.redis.start()
        self.start_web()
        self.celery.start()
        self.beat.start()
        wait_until(lambda: "ready" in self.celery.output() or not self.celery.alive, 60, "the Celery worker")
        assert self.celery.alive, self.celery.output()

    def start_web(self) -> None:
        self.web.start()
        wait_until(lambda: port_open(self.port) or not self.web.alive, 30, "gunicorn to listen")
        assert self.web.alive, self.web.output()

    # -- the host --------------------------------------------------------------------------------

    def start_agent(self, token: str, interval_s: float = 1.0, window_s: float = 1.0) -> Proc:
        argv = [
            PY, "-m", "hwprobe", "run", "--server", self.url, "--token", token,
            "--interval", str(interval_s), "--send-every", str(window_s), "--spool", str(self.agent_spool),
            "--backoff-cap", "5", "--report-port", "0", "--report-socket", "",
        ]  # fmt: skip
        self.agent = Proc("agent", argv, self.host_env, self.tmp / "agent.log").start()
        return self.agent

    def start_worker(self, token: str, concurrency: int = 4, heartbeat_s: float = 1.0) -> Proc:
        config = self.tmp / "worker.toml"
        config.write_text(
            textwrap.dedent(f"""
                allow_shell = true
                [[allow]]
                name = "python -c"
                argv = ["{PY}", "-c", "**"]
            """)
        )
        argv = [
            PY, "-m", "hwprobe", "worker", "--server", self.url, "--token", token, "--config", str(config),
            "--jobs-dir", str(self.tmp / "jobs"), "--heartbeat", str(heartbeat_s),
            "--concurrency", str(concurrency), "--report-port", "0",
        ]  # fmt: skip
        if self.worker is None:
            self.worker = Proc("worker", argv, self.host_env, self.tmp / "worker.log")
        before = self.worker.output(10**9).count("INFO ready:")
        self.worker.start()
        wait_until(
            lambda: self.worker.output(10**9).count("INFO ready:") > before or not self.worker.alive,
            40,
            "the job worker to start",
        )
        assert self.worker.alive, self.worker.output()
        return self.worker

    def agent_last_seq(self) -> int:
        """The last seq the agent's spool gave out: every sample it ever took."""
        with sqlite3.connect(self.agent_spool) as db:
            return int(db.execute("SELECT value FROM counters WHERE name = 'last_seq'").fetchone()[0])

    # -- talking to it ---------------------------------------------------------------------------

    def http(
        self, method: str, path: str, token: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int | None, str, Any]:
        """(status or None when nothing answered, content type, parsed JSON or the text)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            raw = None if body is None else json.dumps(body).encode()
            conn.request(
                method,
                path,
                raw,
                {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(headers or {})},
            )
            reply = conn.getresponse()
            data = reply.read()
        except OSError as err:
            return None, "", str(err)
        finally:
            conn.close()
        kind = reply.getheader("Content-Type") or ""
        try:
            return reply.status, kind, json.loads(data) if data else None
        except ValueError:
            return reply.status, kind, data[:500].decode(errors="replace")

    def logs(self) -> str:
        procs = [self.web, self.celery, self.beat, self.agent, self.worker]
        if self.redis is not None:
            procs.append(self.redis.proc)
        return "\n".join(f"--- {p.name}\n{p.output(3000)}" for p in procs if p is not None)

    def stop(self) -> None:
        """Host first (its last reports reach the server), then the server, then Redis."""
        for proc in (self.worker, self.agent, self.beat, self.celery, self.web):
            if proc is not None:
                proc.stop()
        if self.redis is not None:
            self.redis.kill()


def job_script(seconds: float, every_s: float = 0.5, marker: Path | None = None) -> list[str]:
    """A job that prints a numbered line every ``every_s`` for ``seconds`` (and appends its run to ``marker``)."""
    code = textwrap.dedent(f"""
        import os, time
        if {str(marker) if marker else ""!r}:
            with open({str(marker) if marker else ""!r}, "a") as f:
                f.write(os.environ["HWPROBE_JOB_ID"] + "\\n")
        n = int({seconds} / {every_s})
        for i in range(n):
            print("line", i, flush=True)
            time.sleep({every_s})
        print("done", flush=True)
    """)
    return [PY, "-c", code]
