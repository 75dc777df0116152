"""Tokens per second end to end: a real server (gunicorn), a real agent with its report channel,
a real machine worker (Celery) and the built-in ``train`` and ``serve`` workloads.

``train`` is counted from its progress lines (the worker reads the job's output); ``serve`` from
its own ``/metrics``, which the worker registers with the agent when the job prints its port.
Both reach the server inside the agent's windows and come back through the series API.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.db.models import Sum

from conftest import make_batch
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.payload import Batch
from dashboard.fleet.tests.test_agent_end_to_end import ROOT, Server, free_port, wait_for
from dashboard.jobs import throughput as job_throughput
from dashboard.jobs.models import Job
from dashboard.jobs.tests.test_worker_e2e import QUEUE, Worker, log_text, purge, settle, stop, submit

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform != "linux", reason="process groups are checked through /proc"),
]


def udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent:
    """`python -m hwprobe run` with its report channel on ``port``, output in a file."""

    def __init__(self, env: dict, server: Server, token: str, port: int, tmp: Path) -> None:
        self.log = tmp / "agent.log"
        env = {k: v for k, v in env.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL")}
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hwprobe",
                    "run",
                    "--server",
                    server.url,
                    "--token",
                    token,
                    "--interval",
                    "0.5",
                    "--send-every",
                    "1",
                    "--spool",
                    str(tmp / "spool.sqlite"),
                    "--report-port",
                    str(port),
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: "report channel on" in self.log.read_text() or self.proc.poll() is not None,
            20,
            "the agent to listen",
        )
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self) -> None:
        stop(self.proc)


@pytest.fixture
def fleet(process_env, machine, tmp_path):
    """Server, agent and worker of one machine, all on this host, sharing one report port."""
    purge(QUEUE, "celery")
    store_batch(machine, Batch.model_validate(make_batch([1], gpus=0)))
    port = udp_port()
    env = dict(process_env, HWPROBE_REPORT_PORT=str(port))
    server = Server(env, free_port())
    server.start()
    agent = Agent(env, server, machine.issue_token(), port, tmp_path)
    worker = Worker(env, server, machine.issue_token(), tmp_path)
    yield worker, agent
    worker.stop()
    agent.stop()
    server.stop()


def final_fields(job: Job) -> dict[str, int]:
    """The numbers of the job's final progress line."""
    line = next(l for l in log_text(job).splitlines() if l.startswith("HWPROBE_PROGRESS") and "final=1" in l)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)(?=\s|$)", line)}


def stored(job: Job, column: str) -> int:
    return job_throughput.rows_of([job.pk]).aggregate(n=Sum(column))["n"] or 0


def series_total(client, job: Job, metric: str) -> tuple[float, list[float]]:
    answer = client.get(f"/api/v1/jobs/{job.pk}/series", {"metric": metric})
    assert answer.status_code == 200, answer.content
    data = answer.json()
    means = [m for s in data["series"] for m in s["mean"]]
    return sum(means) * data["step_s"], means


def test_train_and_serve_jobs_report_tokens_per_second_through_the_series_api(fleet, operator, client):
    worker, agent = fleet
    train = submit(operator, ["python", "-m", "hwprobe.workloads", "train", "--seconds", "6"], name="train")
    serve = submit(
        operator,
        ["python", "-m", "hwprobe.workloads", "serve", "--port", "0", "--load", "2", "--seconds", "6"],
        name="serve",
        kind="serve",
    )
    train, serve = settle(train, worker, 60), settle(serve, worker, 60)
    assert (train.status, serve.status) == ("succeeded", "succeeded"), worker.output()

    trained = final_fields(train)["tokens"]
    served = final_fields(serve)
    assert trained > 0 and served["generated_tokens"] > 0
    # Every printed token arrives (the last window may come a second or two after the job ended).
    wait_for(lambda: stored(train, "train_tokens") >= trained, 15, "the training job's last window")
    assert stored(train, "train_tokens") == trained
    assert set(job_throughput.rows_of([train.pk]).values_list("source", flat=True)) == {"progress"}

    # Serving tokens come from scraping /metrics each 0.5 s: what the server generated after the
    # last scrape before it shut down is not seen, so the total may fall a little short.
    try:
        wait_for(
            lambda: stored(serve, "generated_tokens") >= 0.8 * served["generated_tokens"],
            15,
            "the serving job's windows",
        )
    except AssertionError:
        raise AssertionError(
            (stored(serve, "generated_tokens"), served, agent.log.read_text()[-3000:], worker.output()[-3000:])
        )
    generated = stored(serve, "generated_tokens")
    assert 0.8 * served["generated_tokens"] <= generated <= served["generated_tokens"], (generated, served)
    assert 0.8 * served["prompt_tokens"] <= stored(serve, "prompt_tokens") <= served["prompt_tokens"]
    assert set(job_throughput.rows_of([serve.pk]).values_list("source", flat=True)) == {"prometheus"}
    assert "scraping http://127.0.0.1:" in agent.log.read_text()

    client.force_login(operator)
    total, means = series_total(client, train, "tokens.train")
    assert means and all(m > 0 for m in means)
    assert total == pytest.approx(trained, abs=0.001 * 60 * len(means))  # rates are rounded to 3 decimals
    total, means = series_total(client, serve, "tokens.generated")
    assert means and all(m > 0 for m in means)
    assert total == pytest.approx(generated, abs=0.001 * 60 * len(means))
    # Plausible rates: the windows' tokens/s are near what the workload printed as its average.
    rates = [s.train_tokens / s.interval_s for s in job_throughput.rows_of([train.pk]) if s.train_tokens]
    assert max(rates) < 5 * final_fields_rate(train)
    assert series_total(client, train, "tokens.generated")[1] == []


def final_fields_rate(job: Job) -> float:
    line = next(l for l in log_text(job).splitlines() if "final=1" in l)
    return float(re.search(r"tokens_per_s=([0-9.]+)", line).group(1))
