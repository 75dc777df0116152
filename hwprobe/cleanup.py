"""The worker's side of ghost-memory cleanup: stop an ended job's leftover process group, but only
one this worker started, and only once an operator confirmed it on the dashboard.

The dashboard lists the groups an operator confirmed (``GET /api/v1/agent/cleanups``:
``{"cleanups": [{"id", "pgid", "pids", "job_id"}]}``); the worker asks about every 30 s and answers
each (``POST /api/v1/agent/cleanups/ID``) with one outcome:

* ``done``: the group was this worker's job's: SIGTERM to the group, SIGKILL after the job's
  ``grace_s``;
* ``gone``: no process is left in that group;
* ``refused``: this worker has no record of starting that job's group, or the group's processes
  are not the ones it started (a reused id, another job's environment). Nothing is signalled.

The host's policy, not the dashboard, decides: the dashboard is trusted to say *when*, never
*what*. So the worker keeps its own record (:class:`GroupLedger`, a table in its on-disk spool) of
every group it started, written right after the spawn and kept across its own restarts: the
groups that most need a cleanup are those of jobs whose worker and leader were killed together
(the OOM killer, a ``kill -9``), and only a record on disk remembers them. A record is dropped
once its group is gone, so a process id reused later never matches it.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger("hwprobe.worker")

CLEANUP_EVERY_S = 30.0  # how often the worker asks for confirmed cleanups
DONE, GONE, REFUSED = "done", "gone", "refused"
# psutil's create_time comes from clock ticks since boot: the same process reads the same value
# within a tick; a reused pid would have started much later than the group it replaced.
SAME_START_S = 0.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS started_groups (
    pgid INTEGER NOT NULL, job INTEGER NOT NULL, attempt INTEGER NOT NULL,
    leader_started_at REAL, grace_s REAL NOT NULL, started_at REAL NOT NULL,
    PRIMARY KEY (pgid, job, attempt));
"""


def _groups() -> dict[int, list[psutil.Process]]:
    """Live processes (zombies left out) by process group."""
    found: dict[int, list[psutil.Process]] = {}
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.setdefault(os.getpgid(proc.pid), []).append(proc)
        except (ProcessLookupError, psutil.Error):
            continue  # ended while we looked
    return found


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes (zombies left out) whose process group is ``pgid``."""
    return _groups().get(pgid, [])


def started_at(pid: int) -> float | None:
    """When process ``pid`` started (Unix seconds); None if it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class GroupLedger:
    """The process groups this worker started, one row per job attempt; safe from several threads."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        with self._lock:
            self._db.executescript(_SCHEMA)

    def record(self, job: int, attempt: int, pgid: int, grace_s: float) -> None:
        """Remember that this worker started group ``pgid`` (its leader's pid) for the attempt."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO started_groups VALUES (?, ?, ?, ?, ?, ?)",
                (pgid, job, attempt, started_at(pgid), grace_s, time.time()),
            )

    def find(self, pgid: int, job: int) -> dict[str, Any] | None:
        """The newest record of ``job``'s group ``pgid``; None if this worker never started it."""
        with self._lock:
            row = self._db.execute(
                "SELECT attempt, leader_started_at, grace_s FROM started_groups WHERE pgid = ? AND job = ? "
                "ORDER BY started_at DESC LIMIT 1",
                (pgid, job),
            ).fetchone()
        if row is None:
            return None
        return {"pgid": pgid, "job": job, "attempt": row[0], "leader_started_at": row[1], "grace_s": row[2]}

    def forget_gone(self) -> int:
        """Drop the records of groups with no process left (a later group with the same id is not
        ours); returns how many went."""
        with self._lock:
            pgids = [r[0] for r in self._db.execute("SELECT DISTINCT pgid FROM started_groups").fetchall()]
        live = _groups()
        gone = [p for p in pgids if p not in live]
        with self._lock:
            self._db.executemany("DELETE FROM started_groups WHERE pgid = ?", [(p,) for p in gone])
        return len(gone)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _foreign(members: list[psutil.Process], record: dict[str, Any]) -> str | None:
    """Why the group's live processes are not the ones this worker started; None if they are."""
    for proc in members:
        try:
            recorded = record["leader_started_at"]
            if (
                proc.pid == record["pgid"]
                and recorded is not None
                and abs(proc.create_time() - recorded) > SAME_START_S
            ):
                return f"pid {proc.pid} leads the group but is not the leader this worker started"
            job = proc.environ().get("HWPROBE_JOB_ID")
        except psutil.AccessDenied:
            continue  # unreadable environment: the record and the leader's start decide
        except psutil.NoSuchProcess:
            continue
        if job is not None and job != str(record["job"]):
            return f"pid {proc.pid} belongs to job {job}, not job {record['job']}"
    return None


def stop_group(pgid: int, grace_s: float, poll_s: float = 0.1) -> None:
    """SIGTERM to the group, then SIGKILL to whatever is left of it after ``grace_s`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(poll_s)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    # SIGKILL is delivered asynchronously: a process looked at a moment later may still be
    # running (seen under load). Give the kernel up to two seconds to end them.
    settle = time.monotonic() + 2.0
    while group_members(pgid) and time.monotonic() < settle:
        time.sleep(min(poll_s, 0.05))


def handle(request: dict[str, Any], ledger: GroupLedger) -> tuple[str, str]:
    """Carry out one confirmed cleanup within this worker's policy: (outcome, message)."""
    pgid, job = request.get("pgid"), request.get("job_id")
    if not isinstance(pgid, int) or pgid <= 1 or not isinstance(job, int):
        return REFUSED, "not a job's process group"
    record = ledger.find(pgid, job)
    if record is None:
        return REFUSED, f"this worker did not start job {job}'s group {pgid}: report only"
    members = group_members(pgid)
    if not members:
        return GONE, f"no process is left in group {pgid}"
    foreign = _foreign(members, record)
    if foreign:
        return REFUSED, f"group {pgid}: {foreign}"
    pids = sorted(p.pid for p in members)
    stop_group(pgid, record["grace_s"])
    left = group_members(pgid)
    if left:
        return REFUSED, f"group {pgid}: pid(s) {sorted(p.pid for p in left)} outlived SIGKILL"
    return DONE, f"stopped group {pgid} of job {job} (pids {pids}): SIGTERM, SIGKILL after {record['grace_s']:g} s"


class Cleaner:
    """Asks the dashboard for confirmed cleanups every ``every_s`` seconds and answers each, in a
    thread of its own until ``stopping`` is set. ``api`` is the worker's
    :class:`hwprobe.executor.ServerApi`; a failed call is logged and retried at the next round."""

    def __init__(
        self, api: Any, ledger: GroupLedger, stopping: threading.Event, every_s: float = CLEANUP_EVERY_S
    ) -> None:
        self.api, self.ledger, self.stopping, self.every_s = api, ledger, stopping, every_s

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._loop, name="hwprobe-cleanup", daemon=True)
        thread.start()
        return thread

    def _loop(self) -> None:
        while not self.stopping.wait(self.every_s):
            try:
                self.round()
            except Exception:  # noqa: BLE001 - a cleanup bug must not take the worker's jobs down
                log.exception("ghost-memory cleanup round failed")

    def round(self) -> int:
        """Answer every confirmed cleanup once; returns how many were answered."""
        from hwprobe.executor import ApiError  # executor imports the worker's spool, as this does

        try:
            requests = self.api.call("GET", "/api/v1/agent/cleanups", retry_for_s=0).get("cleanups") or []
        except ApiError as err:
            log.warning("could not ask the dashboard for confirmed cleanups: %s", err)
            return 0
        answered = 0
        for request in requests:
            outcome, message = handle(request, self.ledger)
            log.log(
                logging.WARNING if outcome == REFUSED else logging.INFO,
                "cleanup %s: %s (%s)",
                request.get("id"),
                outcome,
                message,
            )
            try:
                body = {"outcome": outcome, "message": message}
                self.api.call("POST", f"/api/v1/agent/cleanups/{request.get('id')}", body, retry_for_s=10)
                answered += 1
            except ApiError as err:
                log.warning("cleanup %s: could not report %s: %s", request.get("id"), outcome, err)
        self.ledger.forget_gone()
        return answered
