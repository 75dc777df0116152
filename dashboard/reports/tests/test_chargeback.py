"""Chargeback per team: allocated vs used GPU-hours (SM activity where reported, NVML utilisation
otherwise), energy, tokens, cost; the page, GET /reports/teams.csv and the API, each team's own."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from dashboard.accounts.models import ApiToken
from dashboard.fleet.models import GpuSample, Machine, ThroughputSample
from dashboard.jobs.models import Job, JobAttempt
from dashboard.jobs.tests.conftest import member, owner, stranger, team_a, team_b, teammate  # noqa: F401

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 10, 8, 0, tzinfo=UTC)  # inside November 2026
QUERY = "from=2026-11-01&to=2026-12-01&tz=UTC"


def windows(machine, gpu, start, minutes, **values):
    """One 60 s window a minute for ``minutes`` minutes, stamped from ``start`` on: [start, start + minutes)."""
    GpuSample.objects.bulk_create(
        GpuSample(
            machine=machine,
            seq=i + 1 + gpu * 10_000,
            gpu_index=gpu,
            ts=start + timedelta(minutes=i),
            interval_s=60,
            count=60,
            **values,
        )
        for i in range(minutes)
    )


@pytest.fixture
def usage(owner, stranger, team_a, team_b):  # noqa: F811
    box = Machine.objects.create(name="box")
    # Team A: 2 GPUs for 2 h; GPU 0 reports SM activity 50 % (and NVML 100 %), GPU 1 only NVML 25 %.
    a = Job.objects.create(owner=owner, team=team_a, name="a", kind="train", argv=["x"], status="succeeded")
    JobAttempt.objects.create(
        job=a, number=1, machine=box, gpus=[0, 1], started_at=T0, ended_at=T0 + timedelta(hours=2)
    )
    windows(box, 0, T0, 120, sm_util_percent_mean=50.0, util_percent_mean=100.0, power_watts_mean=300.0)
    windows(box, 1, T0, 120, util_percent_mean=25.0, power_watts_mean=150.0)
    # Team B: 1 GPU for 1 h, preempted after 30 min and resumed; no telemetry for its GPU 2.
    b = Job.objects.create(owner=stranger, team=team_b, name="b", kind="serve", argv=["x"], status="succeeded")
    t = T0 + timedelta(hours=3)
    JobAttempt.objects.create(job=b, number=1, machine=box, gpus=[2], started_at=t, ended_at=t + timedelta(minutes=30))
    JobAttempt.objects.create(
        job=b, number=2, machine=box, gpus=[2], started_at=t + timedelta(hours=1), ended_at=t + timedelta(minutes=90)
    )
    ThroughputSample.objects.create(
        machine=box,
        seq=1,
        job_key=b.pk,
        source="scrape",
        ts=t + timedelta(minutes=5),
        interval_s=10,
        prompt_tokens=100,
        generated_tokens=400,
    )
    return a, b


def parse(response) -> dict[str, dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    return {r["team"]: r for r in rows}


def test_the_csv_shows_allocated_and_used_gpu_hours_per_team(client, admin_user, usage):
    client.force_login(admin_user)
    r = client.get(f"/reports/teams.csv?{QUERY}")
    assert r.status_code == 200 and r["Content-Type"].startswith("text/csv")
    rows = parse(r)
    a, b = rows["team-a"], rows["team-b"]
    assert float(a["allocated_gpu_hours"]) == 4.0  # 2 GPUs × 2 h
    # SM-weighted on GPU 0 (0.5 × 2 h = 1.0), NVML-weighted on GPU 1 (0.25 × 2 h = 0.5).
    assert float(a["sm_weighted_gpu_hours"]) == 1.0 and float(a["util_weighted_gpu_hours"]) == 0.5
    assert float(a["used_gpu_hours"]) == 1.5 and float(a["used_percent_of_allocated"]) == 37.5
    assert float(a["energy_kwh"]) == pytest.approx((300 + 150) * 2 / 1000)
    assert float(b["allocated_gpu_hours"]) == 1.0  # two 30-minute attempts of 1 GPU
    assert float(b["used_gpu_hours"]) == 0.0 and int(b["unmeasured_windows"]) == 0
    assert (b["prompt_tokens"], b["generated_tokens"], b["jobs"], b["attempts"]) == ("100", "400", "1", "2")
    assert a["cost"] == "" and a["currency"] == ""  # no cost profile: no money invented


def test_a_period_cuts_the_attempts_at_its_edges(client, admin_user, usage):
    client.force_login(admin_user)
    r = client.get("/reports/teams.csv?from=2026-11-10T09:00:00Z&to=2026-11-10T09:30:00Z")
    a = parse(r)["team-a"]
    assert float(a["allocated_gpu_hours"]) == 1.0  # 2 GPUs × 30 min
    assert float(a["used_gpu_hours"]) == pytest.approx(0.375)


def test_each_user_sees_only_their_teams_and_admins_see_all(client, owner, teammate, stranger, admin_user, usage):  # noqa: F811
    for user, expected in ((owner, ["team-a"]), (teammate, ["team-a"]), (stranger, ["team-b"])):
        client.force_login(user)
        assert sorted(parse(client.get(f"/reports/teams.csv?{QUERY}"))) == expected
    client.force_login(admin_user)
    assert {"team-a", "team-b"} <= set(parse(client.get(f"/reports/teams.csv?{QUERY}")))


def test_the_page_and_the_api_show_the_same_figures(client, owner, usage):  # noqa: F811
    client.force_login(owner)
    page = client.get(f"/reports/teams/?{QUERY}")
    assert page.status_code == 200
    assert 'data-team="team-a"' in page.content.decode() and 'data-team="team-b"' not in page.content.decode()
    api = client.get("/api/v1/reports/teams?since=2026-11-01&until=2026-12-01&tz=UTC")
    assert api.status_code == 200
    (row,) = api.json()["teams"]
    assert row["team"] == "team-a" and row["allocated_gpu_hours"] == 4.0 and row["used_gpu_hours"] == 1.5


def test_the_csv_takes_a_personal_token_and_refuses_anonymous_callers(client, stranger, usage):  # noqa: F811
    token = ApiToken.issue(stranger)
    r = client.get(f"/reports/teams.csv?{QUERY}", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert sorted(parse(r)) == ["team-b"]
    assert client.get(f"/reports/teams.csv?{QUERY}").status_code == 401
    assert client.get("/reports/teams/").status_code == 302
