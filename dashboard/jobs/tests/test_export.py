"""The jobs list as CSV: the list's filters and team scope, GPU-hours from attempts, tokens."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.utils import timezone

from conftest import make_batch
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.payload import Batch
from dashboard.jobs.export import HEADER
from dashboard.jobs.models import Job, JobAttempt
from dashboard.jobs.tests.conftest import member, online, owner, stranger, team_a, team_b  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture
def jobs(owner, stranger, team_a, team_b):  # noqa: F811
    """alice's (team A) serving job: two attempts on 2 GPUs (1 h, then 30 min so far) and 1,000
    generated tokens in each of three 10 s windows; her finished training job; bob's (team B)."""
    box = online("gpu-01", gpus=2)
    now = timezone.now()
    serve = Job.objects.create(
        owner=owner, team=team_a, name="chat", kind="serve", argv=["x"], gpus=2, gpu_memory_gb=40,
        machine=box, assigned_gpus=[0, 1], status="running", started_at=now - timedelta(hours=2), attempt=2,
    )  # fmt: skip
    JobAttempt.objects.create(
        job=serve, number=1, machine=box, gpus=[0, 1], started_at=now - timedelta(hours=2),
        ended_at=now - timedelta(hours=1),
    )  # fmt: skip
    JobAttempt.objects.create(job=serve, number=2, machine=box, gpus=[0, 1], started_at=now - timedelta(minutes=30))
    batch = make_batch([2, 3, 4], now.timestamp(), gpus=2, inventory=False)
    for sample in batch["samples"]:
        sample["tokens"] = [{"job_id": serve.pk, "source": "prometheus", "generated": 1000}]
    store_batch(box, Batch.model_validate(batch))
    train = Job.objects.create(
        owner=owner, team=team_a, name="tune", kind="train", argv=["x"], gpus=0, status="succeeded",
        started_at=now - timedelta(hours=3), finished_at=now - timedelta(hours=2, minutes=50), exit_code=0,
    )  # fmt: skip
    Job.objects.create(owner=stranger, team=team_b, name="theirs", kind="train", argv=["x"], gpus=1)
    return serve, train


def rows(response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.content
    assert response["Content-Disposition"].startswith('attachment; filename="jobs-')
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_the_csv_has_the_users_jobs_with_gpu_hours_and_tokens(client, owner, jobs):  # noqa: F811
    serve, train = jobs
    client.force_login(owner)
    got = {r["name"]: r for r in rows(client.get("/jobs/jobs.csv"))}
    assert set(got) == {"chat", "tune"}  # not team B's
    chat = got["chat"]
    assert list(chat) == HEADER
    assert (chat["team"], chat["owner"], chat["machine"], chat["assigned_gpus"]) == ("team-a", "alice", "gpu-01", "0 1")
    assert chat["attempts"] == "2"
    assert float(chat["gpu_hours_held"]) == pytest.approx(2 * 1.0 + 2 * 0.5, abs=0.01)  # to now for the running one
    assert (chat["tokens_kind"], chat["tokens"], chat["mean_tokens_per_s"]) == ("generated", "3000", "100.0")
    assert got["tune"]["run_s"] == "600.0" and got["tune"]["exit_code"] == "0" and got["tune"]["tokens"] == "0"
    assert got["tune"]["gpu_hours_held"] == "0.0" and got["tune"]["mean_tokens_per_s"] == ""


def test_the_lists_filters_apply(client, owner, jobs):  # noqa: F811
    client.force_login(owner)
    assert [r["name"] for r in rows(client.get("/jobs/jobs.csv", {"kind": "train"}))] == ["tune"]
    assert [r["name"] for r in rows(client.get("/jobs/jobs.csv", {"status": "running"}))] == ["chat"]


def test_the_list_links_the_csv_with_its_filters(client, owner, jobs):  # noqa: F811
    client.force_login(owner)
    page = client.get("/jobs/", {"kind": "serve"}).content.decode()
    assert 'href="/jobs/jobs.csv?kind=serve" download' in page


def test_anonymous_users_log_in_first(client, jobs):
    response = client.get("/jobs/jobs.csv")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_past_its_cap_the_file_says_what_it_left_out(client, owner, jobs, monkeypatch):  # noqa: F811
    from dashboard.jobs import export

    monkeypatch.setattr(export, "MAX_ROWS", 1)
    client.force_login(owner)
    text = client.get("/jobs/jobs.csv").content.decode().strip().splitlines()
    assert len(text) == 3 and "only the newest 1 jobs; filter by" in text[-1]
