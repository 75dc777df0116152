"""Tokens end to end, exactly: a real server (gunicorn), a real agent with its report channel, a
real machine worker and real jobs, with the agent's UDP report port taken by another process.

``train`` is counted from its progress lines, ``serve`` by scraping its ``/metrics`` (and its final
totals), a script through ``hwprobe.report``. All three go over the agent's Unix socket, and the
worker has the agent deliver them before it reports the job's end: the totals are final, to the
token, when the job shows it ended, although the agent's windows are 10 s long.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.db.models import Sum

from conftest import make_batch
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import Batch
from dashboard.fleet.tests.test_agent_end_to_end import ROOT, Server, free_port, wait_for
from dashboard.jobs import throughput as job_throughput
from dashboard.jobs.models import Job
from dashboard.jobs.tests.test_worker_e2e import PY, Worker, log_text, server_env, settle, stop, submit

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform != "linux", reason="process groups are checked through /proc"),
]

SEND_EVERY_S = "10"  # the agent's usual window: only the flush at a job's end makes totals final sooner


class Agent:
    """`python -m hwprobe run` with its Unix socket in ``tmp`` and UDP on ``udp_port``."""

    def __init__(self, env: dict, server: Server, token: str, udp_port: int, tmp: Path) -> None:
        self.log = tmp / "agent.log"
        self.socket = tmp / "agent-state" / "report.sock"
        env = {k: v for k, v in env.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL")}
        argv = [PY, "-m", "hwprobe", "run", "--server", server.url, "--token", token, "--interval", "0.5"]
        argv += ["--send-every", SEND_EVERY_S, "--spool", str(tmp / "spool.sqlite")]
        argv += ["--report-port", str(udp_port), "--report-socket", str(self.socket)]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_for(
            lambda: "report channel on unix socket" in self.log.read_text() or self.proc.poll() is not None,
            20,
            "the agent to listen",
        )
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self) -> None:
        stop(self.proc)


class Fleet:
    """One machine's server, agent and worker, the agent's UDP port held by a squatter."""

    def __init__(self, env: dict, machine: Machine, tmp: Path) -> None:
        self.squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.squatter.bind(("127.0.0.1", 0))  # another program on the host took the report port
        port = self.squatter.getsockname()[1]
        env = dict(env, HWPROBE_REPORT_PORT=str(port))
        self.server = Server(server_env(env), free_port())
        self.server.start()
        self.agent = Agent(env, self.server, machine.issue_token(), port, tmp)
        self.worker = Worker(
            dict(env, HWPROBE_REPORT_SOCKET=str(self.agent.socket)), self.server, machine.issue_token(), tmp
        )
        self.policy = tmp / "worker.toml"

    def allow(self, rule: str) -> None:
        """Add a template to the host's policy (the worker reads it before every job)."""
        self.policy.write_text(self.policy.read_text() + rule)

    def stop(self) -> None:
        self.worker.stop()
        self.agent.stop()
        self.server.stop(quick=True)
        self.squatter.close()


@pytest.fixture
def fleet(process_env, machine, tmp_path):
    store_batch(machine, Batch.model_validate(make_batch([1], gpus=0)))
    running = Fleet(process_env, machine, tmp_path)
    yield running
    running.stop()


def final_fields(job: Job) -> dict[str, float]:
    """The numbers of the job's final progress line."""
    lines = log_text(job).splitlines()
    line = next(x for x in lines if x.startswith("HWPROBE_PROGRESS") and "final=1" in x)
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)(?=\s|$)", line)}


def stored(job: Job, column: str) -> int:
    """The job's tokens of one kind as its page counts them (per window, the best source)."""
    kind = {"train_tokens": "train", "generated_tokens": "generated", "prompt_tokens": "prompt"}[column]
    return job_throughput.job_summary(job)[kind]["total_tokens"]


def test_every_token_is_stored_when_the_job_shows_it_ended_though_the_udp_port_is_taken(fleet, operator):
    train = submit(operator, ["python", "-m", "hwprobe.workloads", "train", "--seconds", "6"], name="train")
    serve = submit(
        operator,
        ["python", "-m", "hwprobe.workloads", "serve", "--port", "0", "--load", "2", "--seconds", "6"],
        name="serve",
        kind="serve",
    )
    script = (
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"  # the job runs in a folder of its own
        "from hwprobe import report\n"
        "for _ in range(40):\n    report.tokens(1000)\n    time.sleep(0.1)\n"
    )
    reported = submit(operator, [PY, "-c", script], name="report")
    train, serve, reported = (
        settle(train, fleet.worker, 60),
        settle(serve, fleet.worker, 60),
        settle(reported, fleet.worker, 60),
    )
    assert (train.status, serve.status, reported.status) == ("succeeded",) * 3, fleet.worker.output()

    # No waiting: what the page shows as soon as it says "succeeded" is already final.
    trained, served = final_fields(train), final_fields(serve)
    assert stored(train, "train_tokens") == trained["tokens"]
    assert stored(serve, "generated_tokens") == served["generated_tokens"] > 0
    assert stored(serve, "prompt_tokens") == served["prompt_tokens"]
    assert stored(reported, "train_tokens") == 40_000
    assert set(job_throughput.rows_of([serve.pk]).values_list("source", flat=True)) == {"prometheus"}

    # The mean is over the seconds the job trained (its own clock), not over whole windows.
    summary = job_throughput.job_summary(train)["train"]
    assert summary["mean_tokens_per_s"] == pytest.approx(trained["tokens_per_s"], rel=0.02)
    assert summary["active_s"] == pytest.approx(trained["elapsed_s"], abs=0.1)
    assert "cannot listen on udp" in fleet.agent.log.read_text()  # the squatter really had the port


def test_the_job_chart_has_a_point_a_second(fleet, operator, client):
    job = settle(submit(operator, ["python", "-m", "hwprobe.workloads", "train", "--seconds", "8"]), fleet.worker, 60)
    assert job.status == "succeeded", fleet.worker.output()
    client.force_login(operator)
    data = client.get(f"/api/v1/jobs/{job.pk}/series", {"metric": "tokens.train"}).json()
    [series] = data["series"]
    # About a point a second (progress lines come late on a busy machine), not one per 10 s window.
    assert data["resolution_s"] <= 2.0
    assert len(series["t"]) >= 4
    rows = job_throughput.rows_of([job.pk]).aggregate(n=Sum("train_tokens"))["n"]
    assert rows == final_fields(job)["tokens"]
