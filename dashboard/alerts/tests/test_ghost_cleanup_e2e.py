"""Ghost memory end to end: a real server (gunicorn), a real machine worker and a real job.

The job's leader and its worker are killed together outside the worker (as the OOM killer or a
`kill -9` would); the job's command lives on in its process group, and the replayed H100 NVML
capture charges it GPU memory. The alert fires, nothing is touched until the job's owner confirms
the cleanup, and then the restarted worker stops the group from its on-disk record. A process the
worker never started is never touched, whatever the dashboard asks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from conftest import make_batch
from dashboard.alerts.evaluate import evaluate
from dashboard.alerts.models import Alert, AlertRule, CleanupRequest, GhostProcess
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import Batch
from dashboard.fleet.tests.test_agent_end_to_end import Server, free_port, wait_for
from dashboard.jobs.models import Job
from dashboard.jobs.tests.test_worker_e2e import PY, Worker, log_text, running_pgid, server_env, submit
from hwprobe.collectors.nvidia import NvidiaCollector
from hwprobe.testing import batches, nvml_replay
from hwprobe.tests.conftest import capture_q
from hwprobe.tests.test_executor import group_members

pytestmark = [
    pytest.mark.integration,
    # Real processes killed at exact moments: timing-sensitive on a loaded 2-core machine, so it
    # runs with the fault suites (-m slow) rather than in every default run.
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="process groups are checked through /proc"),
]

SLEEP = "import time; print('up', flush=True); time.sleep(300)"


@pytest.fixture
def rig(process_env, machine, tmp_path):
    """Server and worker running (asking for cleanups every second), the machine online; its first
    window is 40 minutes old, so the test's replayed windows of the last half hour are newer."""
    store_batch(machine, Batch.model_validate(make_batch([1], ts=time.time() - 40 * 60, gpus=0)))
    server = Server(server_env(process_env), free_port())
    server.start()
    worker = Worker(process_env | {"HWPROBE_CLEANUP_EVERY_S": "1"}, server, machine.issue_token(), tmp_path)
    yield worker
    worker.stop()
    server.stop(quick=True)


@pytest.fixture
def stranger():
    """A process in a group of its own that no job and no worker started."""
    proc = subprocess.Popen([PY, "-c", SLEEP], start_new_session=True, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def with_pids(recording: dict[str, Any], pids: dict[int, int]) -> dict[str, Any]:
    """The capture's GPU processes renamed to this host's processes (by the capture's pid)."""
    for device in recording["devices"]:
        for proc in device.get("nvmlDeviceGetComputeRunningProcesses") or ():
            proc["pid"] = pids.get(proc["pid"], proc["pid"])
    return recording


def report(machine: Machine, pids: dict[int, int], at, seq: int) -> None:
    """One agent window from the H100 load capture; group and existence from the real process table."""
    recording = with_pids(nvml_replay.from_nvidia_smi_q(*capture_q("h100", "load")).recording, pids)
    nv = NvidiaCollector(nvml=nvml_replay.NvmlReplay(recording), pid_info=lambda pid: (None, None))
    store_batch(machine, Batch.model_validate(batches.batch(nv, [seq], end_ts=at.timestamp())), now=at)


def kill_worker_and_leader(worker: Worker, pgid: int) -> None:
    """The worker is frozen first so that it cannot stop the group when its leader dies."""
    os.kill(worker.proc.pid, signal.SIGSTOP)
    os.kill(pgid, signal.SIGKILL)
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()


def test_a_jobs_group_killed_outside_the_worker_is_stopped_only_after_its_owner_confirms(
    rig, machine, operator, client, stranger
):
    # The default rule comes from a data migration; an earlier transactional test's flush removes it.
    if not AlertRule.objects.filter(kind="ghost_memory").exists():
        AlertRule.objects.create(name="GPU memory held outside any job", kind="ghost_memory", threshold=30)
    AlertRule.objects.exclude(kind="ghost_memory").update(enabled=False)
    job = submit(operator, [PY, "-c", SLEEP])
    pgid = running_pgid(job, rig)
    wait_for(lambda: len(group_members(pgid)) >= 2, 10, "the job's leader and its command")
    # Its first line printed and read: a command still starting up when the leader dies prints
    # into a closed pipe and dies of that (seen under CI's load), which is not what is tested here.
    wait_for(lambda: "up" in log_text(job), 30, "the command's first line in the job's log")
    [command] = [p for p in group_members(pgid) if p != pgid]
    kill_worker_and_leader(rig, pgid)
    # The command lives on, its group without a leader. A SIGKILLed leader is listed until the
    # kernel has finished its exit (seen under CI's load: both pids a moment after the kill).
    wait_for(lambda: group_members(pgid) == [command], 10, "the leader gone and its command alive")

    rig.start()  # the same spool: the worker's record of the groups it started
    wait_for(lambda: Job.objects.get(pk=job.pk).status == Job.Status.LOST, 30, "the job to end as lost")

    # The capture's job processes are now the dead leader and its command; gpu_burn is the stranger.
    pids = {11327: pgid, 11328: command, 11345: stranger.pid}
    now = timezone.now()
    report(machine, pids, now - timedelta(minutes=31), 2)
    assert evaluate(now - timedelta(minutes=31))["fired"] == 0  # held for 0 of the rule's 30 minutes
    report(machine, pids, now, 3)
    evaluate(now)
    [alert] = Alert.objects.filter(rule__kind="ghost_memory")
    assert f"left by ended job(s) #{job.pk}" in alert.message
    assert "1 outside any job" in alert.message
    reasons = dict(GhostProcess.objects.filter(machine=machine).values_list("pid", "reason"))
    assert reasons[command] == "orphaned" and reasons[stranger.pid] == "unknown"

    time.sleep(3)  # three of the worker's cleanup rounds: nothing confirmed, nothing touched
    assert group_members(pgid) == [command]
    assert not CleanupRequest.objects.exists()

    client.force_login(operator)
    client.post(f"/alerts/ghosts/{machine.name}/{stranger.pid}/cleanup/")
    assert not CleanupRequest.objects.exists()  # an unknown process is report-only
    client.post(f"/alerts/ghosts/{machine.name}/{pgid}/cleanup/")
    request = CleanupRequest.objects.get()
    wait_for(lambda: CleanupRequest.objects.get().status != "confirmed", 20, "the worker to answer")
    request.refresh_from_db()
    assert request.status == "done", (request.message, rig.output())
    assert group_members(pgid) == []
    assert stranger.poll() is None


def test_the_worker_refuses_to_stop_a_group_it_did_not_start_whatever_the_dashboard_asks(
    rig, machine, operator, stranger
):
    job = submit(operator, [PY, "-c", SLEEP])
    running_pgid(job, rig)
    # A dashboard that is wrong (or not the host's friend) names the stranger as the job's group.
    request = CleanupRequest.objects.create(machine=machine, job=job, pgid=stranger.pid, confirmed_by=operator)
    wait_for(lambda: CleanupRequest.objects.get().status != "confirmed", 20, "the worker to answer")
    request.refresh_from_db()
    assert request.status == "refused", rig.output()
    assert "did not start" in request.message
    time.sleep(0.5)
    assert stranger.poll() is None
