"""The job worker's on-disk spool: what it owes the dashboard survives the dashboard's absence.

A web outage must not kill healthy jobs, so the worker keeps running them while the server is
away and keeps everything it would have told the server here, in SQLite (WAL, as
:mod:`hwprobe.spool` keeps telemetry), until the server has it:

* the worker's id, made once: the server knows the attempts this worker took by it, so a worker
  that restarts (and whose jobs died with it) is recognised and its old attempts end as lost;
* each attempt the worker took, ``held`` until the server has its finish report (the worker
  names them when it asks for work; an attempt it took and no longer holds is over);
* an outbox of reports in the order they were made: log chunks, the latest heartbeat of each
  attempt (older ones say nothing more), and the finish. :class:`Outbox` delivers them.

Every method is safe to call from several threads (one connection behind a lock).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwprobe.client import RETRY, Backoff, classify

log = logging.getLogger("hwprobe.worker")

LOG, HEARTBEAT, FINISH = "log", "heartbeat", "finish"
RUNNING, FINISHED = "running", "finished"
BATCH_CHUNKS = 64  # log chunks per request

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    job INTEGER NOT NULL, attempt INTEGER NOT NULL, state TEXT NOT NULL, taken_at REAL NOT NULL,
    PRIMARY KEY (job, attempt));
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job INTEGER NOT NULL, attempt INTEGER NOT NULL,
    kind TEXT NOT NULL, body TEXT NOT NULL, chars INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS outbox_attempt ON outbox (job, attempt, kind);
"""


@dataclass
class Batch:
    """Reports of one kind for one attempt, oldest first: their outbox ids and bodies."""

    kind: str
    job: int
    attempt: int
    ids: list[int]
    bodies: list[dict[str, Any]]


class JobSpool:
    """The worker's durable state; ``path=":memory:"`` keeps it in memory (a lone job run, tests)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = path
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash; only a power cut may lose the last commit.
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('worker_id', ?)", (uuid.uuid4().hex,))
            self.worker_id: str = self._db.execute("SELECT value FROM meta WHERE name = 'worker_id'").fetchone()[0]

    # -- attempts ----------------------------------------------------------------------------

    def take(self, job: int, attempt: int) -> None:
        """Record an attempt the server handed to this worker (before anything of it runs)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO attempts (job, attempt, state, taken_at) VALUES (?, ?, ?, ?)",
                (job, attempt, RUNNING, time.time()),
            )

    def held(self) -> list[tuple[int, int]]:
        """(job, attempt) of every attempt running here or whose finish the server does not have yet."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job, attempt FROM attempts WHERE state IN (?, ?) ORDER BY taken_at", (RUNNING, FINISHED)
            ).fetchall()
        return [(int(j), int(a)) for j, a in rows]

    def abandon_running(self) -> list[tuple[int, int]]:
        """At start: attempts an earlier run of the worker left running are gone (their processes
        die with the worker). They are no longer held, so the server ends them; their spooled
        log is still delivered. Returns them."""
        with self._lock:
            rows = self._db.execute("SELECT job, attempt FROM attempts WHERE state = ?", (RUNNING,)).fetchall()
            self._db.execute("DELETE FROM attempts WHERE state = ?", (RUNNING,))
        return [(int(j), int(a)) for j, a in rows]

    # -- the outbox --------------------------------------------------------------------------

    def _put(self, job: int, attempt: int, kind: str, body: dict[str, Any], chars: int = 0) -> None:
        self._db.execute(
            "INSERT INTO outbox (job, attempt, kind, body, chars) VALUES (?, ?, ?, ?, ?)",
            (job, attempt, kind, json.dumps(body, separators=(",", ":"), allow_nan=False), chars),
        )

    def add_log(self, job: int, attempt: int, chunk: dict[str, Any]) -> None:
        """A numbered log chunk (``{"seq", "stream", "text", "ts"}``) to send."""
        with self._lock:
            self._put(job, attempt, LOG, chunk, len(chunk["text"]))

    def pending_log_chars(self, job: int, attempt: int) -> int:
        """Characters of this attempt's log not yet accepted by the server."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(chars), 0) FROM outbox WHERE job = ? AND attempt = ? AND kind = ?",
                (job, attempt, LOG),
            ).fetchone()
        return int(row[0])

    def set_heartbeat(self, job: int, attempt: int, body: dict[str, Any]) -> None:
        """Keep the latest heartbeat the server could not take (it replaces any older one)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "DELETE FROM outbox WHERE job = ? AND attempt = ? AND kind = ?", (job, attempt, HEARTBEAT)
                )
                self._put(job, attempt, HEARTBEAT, body)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def clear_heartbeat(self, job: int, attempt: int) -> None:
        """A live heartbeat got through: a spooled one has nothing left to say."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE job = ? AND attempt = ? AND kind = ?", (job, attempt, HEARTBEAT))

    def add_finish(self, job: int, attempt: int, body: dict[str, Any]) -> None:
        """The attempt's end, sent after everything it reported before."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._put(job, attempt, FINISH, body)
                self._db.execute(
                    "INSERT INTO attempts (job, attempt, state, taken_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (job, attempt) DO UPDATE SET state = excluded.state",
                    (job, attempt, FINISHED, time.time()),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def next_batch(self, max_chunks: int = BATCH_CHUNKS) -> Batch | None:
        """The oldest report, with the log chunks of the same attempt right behind it; None if empty."""
        with self._lock:
            first = self._db.execute("SELECT id, job, attempt, kind, body FROM outbox ORDER BY id LIMIT 1").fetchone()
            if first is None:
                return None
            rid, job, attempt, kind, body = first
            rows = [(rid, body)]
            if kind == LOG:
                # Stop at the first report of another kind for this attempt: the order holds.
                barrier = self._db.execute(
                    "SELECT MIN(id) FROM outbox WHERE job = ? AND attempt = ? AND kind != ? AND id > ?",
                    (job, attempt, LOG, rid),
                ).fetchone()[0]
                rows += self._db.execute(
                    "SELECT id, body FROM outbox WHERE job = ? AND attempt = ? AND kind = ? AND id > ? AND id < ? "
                    "ORDER BY id LIMIT ?",
                    (job, attempt, LOG, rid, barrier if barrier is not None else 2**63 - 1, max_chunks - 1),
                ).fetchall()
        return Batch(kind, int(job), int(attempt), [r[0] for r in rows], [json.loads(r[1]) for r in rows])

    def done(self, batch: Batch) -> None:
        """The server took the batch (or refused it for good): it leaves the outbox.

        A delivered finish also ends the attempt here: it is held no more.
        """
        marks = ",".join("?" * len(batch.ids))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", batch.ids)
                if batch.kind == FINISH:
                    self._db.execute("DELETE FROM attempts WHERE job = ? AND attempt = ?", (batch.job, batch.attempt))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def pending(self, job: int | None = None, attempt: int | None = None) -> int:
        """Reports not yet delivered (of one attempt, or all)."""
        with self._lock:
            if job is None:
                row = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
            else:
                row = self._db.execute(
                    "SELECT COUNT(*) FROM outbox WHERE job = ? AND attempt = ?", (job, attempt)
                ).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Outbox:
    """Delivers a spool's reports in order from one thread, and keeps them while the server is away.

    ``send(batch)`` makes the HTTP call and raises :class:`hwprobe.executor.ApiError` (or its
    ``StaleAttempt``) on failure. No answer, 5xx, 408 and 429 keep the batch and retry with backoff
    (at most ``cap_s`` apart); a 409 (the server decided otherwise: the attempt was lost or
    requeued) or another 4xx (malformed) drops it with a log line, so one bad report never blocks
    the ones behind it.
    """

    def __init__(
        self,
        spool: JobSpool,
        send: Callable[[Batch], None],
        base_s: float = 0.25,
        cap_s: float = 5.0,
    ) -> None:
        self.spool, self._send = spool, send
        self._backoff = Backoff(base_s, cap_s)
        self._cond = threading.Condition()
        self._stopping = False
        self._down_since: float | None = None
        self.delivered = 0
        self._thread = threading.Thread(target=self._run, name="hwprobe-outbox", daemon=True)

    def start(self) -> Outbox:
        self._thread.start()
        return self

    def wake(self) -> None:
        """Something new is in the spool: send it now rather than at the next look."""
        with self._cond:
            self._cond.notify_all()

    def wait_sent(self, job: int, attempt: int, timeout_s: float) -> bool:
        """Wait until nothing of this attempt is left to send; False if time ran out first."""
        deadline = time.monotonic() + timeout_s
        while self.spool.pending(job, attempt):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._cond:
                self._cond.wait(min(left, 0.05))
        return True

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Send what is left for at most ``timeout_s``, then stop; True if nothing was left behind."""
        deadline = time.monotonic() + timeout_s
        while self.spool.pending() and time.monotonic() < deadline and self._thread.is_alive():
            with self._cond:
                self._cond.wait(0.05)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(5)
        return self.spool.pending() == 0

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
            batch = self.spool.next_batch()
            if batch is None:
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(1.0)
                continue
            if self._deliver(batch):
                self.spool.done(batch)
                with self._cond:
                    self._cond.notify_all()
                continue
            delay = self._backoff.next_delay()
            with self._cond:
                if not self._stopping:
                    self._cond.wait(max(0.05, delay))

    def _deliver(self, batch: Batch) -> bool:
        """True when the batch may leave the outbox (taken, or refused for good)."""
        from hwprobe.executor import ApiError, StaleAttempt  # executor imports this module

        try:
            self._send(batch)
        except StaleAttempt as err:
            log.info(
                "job %s attempt %s: the server refused a %s report (%s); dropped",
                batch.job,
                batch.attempt,
                batch.kind,
                err,
            )
            return True
        except ApiError as err:
            if classify(err.status) == RETRY:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("cannot reach the dashboard (%s); keeping job reports on disk and retrying", err)
                return False
            log.error(
                "job %s attempt %s: the server refused a %s report as malformed (%s); dropped",
                batch.job,
                batch.attempt,
                batch.kind,
                err,
            )
            return True
        if self._down_since is not None:
            log.info(
                "the dashboard is reachable again after %.0f s; sending the reports kept meanwhile",
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        self._backoff.reset()
        self.delivered += len(batch.ids)
        return True
