"""A real server (gunicorn), a real machine worker (`hwprobe worker`) and real jobs.

Placement runs in the test process (`tasks.place()`); the worker takes the job over HTTP from its
long-poll (`POST /api/v1/agent/jobs/next`), which looks at the database every second here (the
server has no Redis to wake it). Outages and Redis faults are in test_faults.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from conftest import make_batch
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine, MachineState
from dashboard.fleet.payload import Batch
from dashboard.fleet.tests.test_agent_end_to_end import ROOT, Server, free_port, wait_for
from dashboard.jobs import service, tasks
from dashboard.jobs.models import Job, JobAttempt, JobLog
from hwprobe.tests.test_executor import group_members

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform != "linux", reason="process groups are checked through /proc"),
]

PY = sys.executable


def server_env(env: dict) -> dict:
    """The server processes' environment: no Redis (the long-poll looks at the database), short waits."""
    return {k: v for k, v in env.items() if k != "REDIS_URL"} | {"JOB_POLL_WAIT_S": "5"}


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it is still there after 20 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Worker:
    """`python -m hwprobe worker` for the test machine, its output in a file for failures."""

    def __init__(self, env: dict, server: Server, token: str, tmp: Path) -> None:
        self.server, self.token, self.tmp = server, token, tmp
        config = tmp / "worker.toml"
        config.write_text(
            textwrap.dedent(f"""
            allow_shell = true
            [[allow]]
            name = "python -c"
            argv = [{PY!r}, "-c", "**"]
        """).replace("'", '"')
        )
        self.log = tmp / "worker.log"
        self.log.unlink(missing_ok=True)
        self.jobs_dir = tmp / "jobs"
        argv = [
            PY,
            "-c",
            "import sys; from hwprobe.worker import main; sys.exit(main(sys.argv[1:]))",
            "--server",
            server.url,
            "--token",
            token,
            "--config",
            str(config),
            "--jobs-dir",
            str(self.jobs_dir),
            "--heartbeat",
            "1",
            "--concurrency",
            "2",
            "--state-dir",
            str(tmp / "state"),
        ]
        # A machine has no Django: nothing of the server's configuration reaches the worker.
        self.argv = argv
        self.env = {k: v for k, v in env.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL")}
        self.start()

    def start(self) -> None:
        """Start it (again: the same state folder, so the same worker id and spool)."""
        before = self.output().count("INFO ready:") if self.log.exists() else 0
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        ready = lambda: self.output().count("INFO ready:") > before or self.proc.poll() is not None  # noqa: E731
        wait_for(ready, 40, "the worker to start")
        assert self.proc.poll() is None, self.output()

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        stop(self.proc)


@pytest.fixture
def loop(process_env, machine, tmp_path):
    """Server and worker running, the machine online (CPU only)."""
    store_batch(machine, Batch.model_validate(make_batch([1], gpus=0)))
    server = Server(server_env(process_env), free_port())
    server.start()
    worker = Worker(process_env, server, machine.issue_token(), tmp_path)
    yield worker
    worker.stop()
    server.stop(quick=True)


def submit(user, command, **fields) -> Job:
    values = {
        "name": "e2e",
        "kind": "train",
        "argv": None,
        "shell": "",
        "workdir": "",
        "env": {},
        "gpus": 0,
        "gpu_memory_gb": 0,
        "priority": 0,
        "max_runtime_s": None,
        "preemptible": False,
        "target": None,
    }
    if isinstance(command, str):
        values["shell"] = command
    else:
        values["argv"] = command
    values.update(fields)
    job = service.submit(user, values)
    assert tasks.place() == 1
    return job


def settle(job: Job, worker: Worker, timeout_s: float = 40) -> Job:
    """Wait for ``job`` to end; the worker's log explains a timeout."""
    try:
        wait_for(lambda: Job.objects.get(pk=job.pk).is_finished, timeout_s, f"job #{job.pk} to end")
    except AssertionError:
        raise AssertionError(
            f"job #{job.pk} is {Job.objects.get(pk=job.pk).status}; worker:\n{worker.output()}"
        ) from None
    return Job.objects.get(pk=job.pk)


def log_text(job: Job) -> str:
    return "".join(JobLog.objects.filter(job=job).order_by("attempt", "seq").values_list("text", flat=True))


def running_pgid(job: Job, worker: Worker) -> int:
    try:
        wait_for(lambda: Job.objects.get(pk=job.pk).pgid is not None, 30, "the job to run")
    except AssertionError:
        raise AssertionError(worker.output()) from None
    return Job.objects.get(pk=job.pk).pgid


SLEEPER = [
    PY,
    "-c",
    "import subprocess, time; subprocess.Popen(['sleep', '300']); print('up', flush=True); time.sleep(300)",
]


def test_a_built_in_training_job_runs_to_success_with_its_log_stored(loop, operator):
    job = submit(operator, ["python", "-m", "hwprobe.workloads", "train", "--seconds", "3"])
    job = settle(job, loop)
    assert job.status == "succeeded", (job.status_message, loop.output())
    assert job.exit_code == 0
    attempt = job.attempts.get()
    assert attempt.outcome == "succeeded" and attempt.started_at and attempt.ended_at
    text = log_text(job)
    # A line about once a second of training and a final one; a step slowed by a busy machine can
    # leave only one line in 3 s besides the final one.
    assert text.count("HWPROBE_PROGRESS kind=train") >= 2
    assert "final=1" in text
    assert (loop.jobs_dir / str(job.pk) / "mingru.npz").exists()


def test_the_worker_reports_its_hosts_policy_and_the_form_offers_it(loop, machine, operator, client):
    from dashboard.fleet.models import Machine

    # The worker reports before it starts consuming, so the fixture's "ready" means it is stored.
    reported = Machine.objects.get(pk=machine.pk)
    assert reported.worker_seen_at is not None, loop.output()
    assert reported.worker_policy["allow_shell"] is True and reported.worker_policy["builtin_workloads"] is True
    names = [t["name"] for t in reported.worker_policy["templates"]]
    assert names == ["built-in train", "built-in serve", "python -c"]
    assert reported.worker_policy["templates"][2]["argv"] == [PY, "-c", "**"]
    client.force_login(operator)
    page = client.get("/jobs/new/").content.decode()
    assert "-c **" in page.split('<option value="gpu-01"')[1].split("</option>")[0]


def test_a_failing_command_fails_with_its_exit_code(loop, operator):
    job = settle(submit(operator, [PY, "-c", "import sys; print('bye'); sys.exit(3)"]), loop)
    assert (job.status, job.exit_code, job.status_message) == ("failed", 3, "exited with code 3")
    assert log_text(job) == "bye\n"


def test_cancelling_a_running_job_stops_its_whole_process_group(loop, operator):
    job = submit(operator, SLEEPER)
    pgid = running_pgid(job, loop)
    wait_for(lambda: len(group_members(pgid)) >= 3, 10, "the job and its grandchild")  # shim, python, sleep
    service.cancel(operator, Job.objects.get(pk=job.pk))
    job = settle(job, loop, 20)
    assert job.status == "cancelled" and job.attempts.get().outcome == "cancelled"
    assert group_members(pgid) == []
    assert "up" in log_text(job)


def test_the_maximum_run_time_fails_the_job_with_a_timeout_message(loop, operator):
    job = settle(submit(operator, [PY, "-c", "import time; time.sleep(300)"], max_runtime_s=2), loop, 30)
    assert job.status == "failed"
    assert job.status_message.startswith("timed out: stopped after the maximum run time of 2 s")
    assert job.attempts.get().outcome == "timeout"


def test_a_killed_worker_leaves_its_job_unreachable_then_lost_and_its_processes_gone(loop, operator, machine):
    job = submit(operator, SLEEPER)
    pgid = running_pgid(job, loop)
    wait_for(lambda: len(group_members(pgid)) >= 3, 10, "the job and its grandchild")
    loop.proc.kill()
    loop.proc.wait(5)
    wait_for(lambda: group_members(pgid) == [], 15, "the job's processes to die with the worker")
    # check_lost's rules, run as if the bounds had passed: silent -> unreachable, not lost at once.
    now = timezone.now() + timedelta(seconds=settings.JOB_UNREACHABLE_AFTER_S + 2)
    assert service.mark_lost(now=now) == []
    assert Job.objects.get(pk=job.pk).status == "unreachable"
    # The host is heard from again (its agent reports) while the job's worker stays silent: lost.
    MachineState.objects.update_or_create(machine_id=machine.pk, defaults={"last_seen_at": now + timedelta(seconds=1)})
    service.mark_lost(now=now + timedelta(seconds=2))
    assert service.mark_lost(now=now + timedelta(seconds=2 + settings.JOB_LOST_AFTER_S)) == [job.pk]
    job.refresh_from_db()
    assert job.status == "lost" and job.attempts.get().outcome == "lost"


def test_a_restarted_worker_ends_the_job_it_ran_before_at_its_first_poll(loop, operator, process_env, tmp_path):
    job = submit(operator, SLEEPER)
    pgid = running_pgid(job, loop)
    loop.server.stop()  # what the job prints now stays in the worker's spool
    time.sleep(2)
    loop.proc.kill()
    loop.proc.wait(5)
    wait_for(lambda: group_members(pgid) == [], 15, "the job's processes to die with the worker")
    assert Job.objects.get(pk=job.pk).status == "running"
    loop.server.start()
    loop.start()  # the same state folder: the same worker id and spool
    wait_for(lambda: Job.objects.get(pk=job.pk).is_finished, 15, "the job to end")
    job.refresh_from_db()
    assert job.status == "lost" and "came back without it" in job.status_message
    assert "up" in log_text(job), "its log kept in the worker's spool still arrived"


def test_a_job_is_taken_once_by_one_of_two_workers_of_a_machine(loop, operator, process_env, tmp_path):
    (tmp_path / "second").mkdir()
    second = Worker(process_env, loop.server, loop.token, tmp_path / "second")
    try:
        jobs = [submit(operator, [PY, "-c", f"print({i})"]) for i in range(6)]
        for job in jobs:
            assert settle(job, loop).status == "succeeded"
    finally:
        second.stop()
    assert JobAttempt.objects.filter(job__in=jobs).count() == 6, "one attempt each: none ran twice"
    assert [log_text(job) for job in jobs] == [f"{i}\n" for i in range(6)]


def test_a_command_outside_the_hosts_allowlist_is_refused_and_nothing_runs(loop, operator, tmp_path):
    marker = tmp_path / "ran"
    job = settle(submit(operator, ["touch", str(marker)]), loop)
    assert job.status == "failed"
    assert job.status_message.startswith("refused by this host's policy: `touch")
    assert job.attempts.get().outcome == "refused" and job.attempts.get().started_at is None
    time.sleep(0.5)
    assert not marker.exists()
    assert not os.path.exists(loop.jobs_dir / str(job.pk)), "not even its folder is created"


def test_placement_sends_a_job_to_the_machine_with_room_and_its_worker_runs_it(process_env, operator, tmp_path):
    from dashboard.fleet.models import Machine

    def online(name: str, used: float) -> Machine:
        m = Machine.objects.create(name=name)
        batch = make_batch([1], gpus=1)
        batch["samples"][0]["gpus"][0]["mem_used_bytes"] = {"min": used, "mean": used, "max": used}
        store_batch(m, Batch.model_validate(batch))
        return m

    full, roomy = online("gpu-full", used=80e9), online("gpu-roomy", used=10e9)
    server = Server(server_env(process_env), free_port())
    server.start()
    workers = []
    for m in (full, roomy):
        (tmp_path / m.name).mkdir()
        workers.append(Worker(process_env, server, m.issue_token(), tmp_path / m.name))
    try:
        job = settle(
            submit(
                operator, [PY, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"], gpus=1, gpu_memory_gb=40
            ),
            workers[1],
        )
        assert (job.status, job.machine.name) == ("succeeded", "gpu-roomy"), workers[1].output()
        assert log_text(job).strip() == "GPU-00000000-test"  # the GPU's UUID from the inventory
        waiting = service.submit(
            operator, {"name": "huge", "kind": "train", "argv": [PY, "-c", "pass"], "gpus": 1, "gpu_memory_gb": 500}
        )
        assert tasks.place() == 0
        waiting.refresh_from_db()
        assert waiting.status == "queued"
        assert waiting.status_message.startswith("needs 1 GPU × 500 GiB; the largest free is 1 × 70 GiB on gpu-roomy")
    finally:
        for w in workers:
            w.stop()
        server.stop(quick=True)


def test_serving_preempts_training_which_checkpoints_and_resumes_later(loop, operator, machine):
    def telemetry(seq: int, used: float) -> None:
        batch = make_batch([seq], gpus=1)
        batch["samples"][0]["gpus"][0]["mem_used_bytes"] = {"min": used, "mean": used, "max": used}
        store_batch(machine, Batch.model_validate(batch))

    telemetry(2, used=0)
    train = submit(
        operator,
        ["python", "-m", "hwprobe.workloads", "train", "--seconds", "0", "--resume"],
        gpus=1,
        gpu_memory_gb=60,
        preemptible=True,
        name="trainer",
    )
    wait_for(lambda: "HWPROBE_PROGRESS" in log_text(train), 40, "training to make progress")
    telemetry(3, used=65e9)  # the trainer holds its memory now
    serve = service.submit(
        operator,
        {
            "name": "server",
            "kind": "serve",
            "argv": [PY, "-c", "print('serving')"],
            "gpus": 1,
            "gpu_memory_gb": 60,
            "priority": 10,
        },
    )
    assert tasks.place() == 0  # no room: the trainer is asked to make some
    assert Job.objects.get(pk=train.pk).preempt_requested
    wait_for(lambda: Job.objects.get(pk=train.pk).status == "queued", 30, "the trainer to checkpoint and requeue")
    assert [a.outcome for a in Job.objects.get(pk=train.pk).attempts.all()] == ["preempted"]
    telemetry(4, used=0)  # its memory is free again
    assert tasks.place() == 1  # the serving job first: it has the higher priority
    serve = settle(serve, loop)
    assert serve.status == "succeeded" and log_text(serve) == "serving\n"
    assert tasks.place() == 1  # now the trainer resumes, as a second attempt
    wait_for(lambda: "resuming from" in log_text(Job.objects.get(pk=train.pk)), 40, "the trainer to resume")
    service.cancel(operator, Job.objects.get(pk=train.pk))
    train = settle(train, loop, 30)
    assert [a.outcome for a in train.attempts.all()] == ["preempted", "cancelled"]
