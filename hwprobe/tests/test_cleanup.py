"""The worker's ghost-memory cleanup on real process groups: it stops only groups it recorded
starting, for the job the dashboard names, and leaves everything else alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwprobe import cleanup

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups are checked through /proc")

# A group leader that ignores SIGTERM, so only the SIGKILL after the grace period ends it.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
)


def start_group(env: dict[str, str] | None = None, code: str = STUBBORN) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        start_new_session=True,
        stdout=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    return proc


@pytest.fixture
def groups():
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str] | None = None, code: str = STUBBORN) -> subprocess.Popen[bytes]:
        started.append(start_group(env, code))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_group_the_worker_started_is_stopped_with_sigterm_then_sigkill_after_the_jobs_grace(groups, tmp_path):
    ledger = cleanup.GroupLedger(tmp_path / "spool.sqlite3")
    proc = groups({"HWPROBE_JOB_ID": "7"})
    ledger.record(7, 1, proc.pid, 0.5)
    began = time.monotonic()
    outcome, message = cleanup.handle({"id": 1, "pgid": proc.pid, "job_id": 7}, ledger)
    assert outcome == cleanup.DONE, message
    assert time.monotonic() - began >= 0.5  # it ignored SIGTERM: SIGKILL came after the grace period
    assert proc.wait(5) == -signal.SIGKILL
    assert cleanup.group_members(proc.pid) == []


def test_a_group_it_did_not_start_is_refused_and_never_signalled(groups, tmp_path):
    ledger = cleanup.GroupLedger(tmp_path / "spool.sqlite3")
    stranger = groups()
    outcome, message = cleanup.handle({"id": 1, "pgid": stranger.pid, "job_id": 7}, ledger)
    assert outcome == cleanup.REFUSED and "did not start" in message
    time.sleep(0.2)
    assert stranger.poll() is None


def test_a_group_recorded_for_another_job_is_refused(groups, tmp_path):
    ledger = cleanup.GroupLedger(tmp_path / "spool.sqlite3")
    proc = groups({"HWPROBE_JOB_ID": "7"})
    ledger.record(7, 1, proc.pid, 0.5)
    assert cleanup.handle({"id": 1, "pgid": proc.pid, "job_id": 8}, ledger)[0] == cleanup.REFUSED
    assert proc.poll() is None


def test_a_group_whose_processes_carry_another_jobs_id_is_refused(groups, tmp_path):
    ledger = cleanup.GroupLedger(tmp_path / "spool.sqlite3")
    proc = groups({"HWPROBE_JOB_ID": "9"})
    ledger.record(7, 1, proc.pid, 0.5)
    outcome, message = cleanup.handle({"id": 1, "pgid": proc.pid, "job_id": 7}, ledger)
    assert outcome == cleanup.REFUSED and "belongs to job 9" in message
    assert proc.poll() is None


def test_a_group_with_no_process_left_is_gone_and_its_record_is_forgotten(groups, tmp_path):
    ledger = cleanup.GroupLedger(tmp_path / "spool.sqlite3")
    proc = groups({"HWPROBE_JOB_ID": "7"})
    ledger.record(7, 1, proc.pid, 0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert cleanup.handle({"id": 1, "pgid": proc.pid, "job_id": 7}, ledger)[0] == cleanup.GONE
    assert ledger.forget_gone() == 1
    assert ledger.find(proc.pid, 7) is None


def test_the_record_survives_the_workers_restart(groups, tmp_path: Path):
    path = tmp_path / "spool.sqlite3"
    proc = groups({"HWPROBE_JOB_ID": "7"})
    first = cleanup.GroupLedger(path)
    first.record(7, 1, proc.pid, 0.5)
    first.close()
    again = cleanup.GroupLedger(path)
    assert again.forget_gone() == 0  # the group lives: its record stays
    assert again.find(proc.pid, 7) == {
        "pgid": proc.pid,
        "job": 7,
        "attempt": 1,
        "leader_started_at": cleanup.started_at(proc.pid),
        "grace_s": 0.5,
    }


def test_malformed_requests_are_refused(tmp_path):
    ledger = cleanup.GroupLedger(tmp_path / "spool.sqlite3")
    for request in ({"pgid": 1, "job_id": 7}, {"pgid": "12", "job_id": 7}, {"pgid": 1234, "job_id": None}):
        assert cleanup.handle(request, ledger)[0] == cleanup.REFUSED
