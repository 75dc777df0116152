"""The submit form's team select: shown to a user who may submit for several teams, each job in
the team picked; a user with one team never sees it; a team one may only view is not offered."""

from __future__ import annotations

import pytest

from dashboard.jobs.models import Job
from dashboard.teams import service

from .conftest import member, owner, team_a, team_b  # noqa: F401

pytestmark = pytest.mark.django_db

JOB = {
    "name": "train-demo",
    "kind": "train",
    "command": "python -m hwprobe.workloads train --seconds 60",
    "gpus": "0",
    "gpu_memory_gb": "0",
    "machine": "",
    "priority": "0",
}


@pytest.fixture
def two_teams(django_user_model, team_a, team_b):  # noqa: F811
    user = member(django_user_model, "tess", team_a, "operator")
    service.set_role(None, team_b, user, "admin")
    return user


def test_a_user_in_two_teams_picks_the_team_and_the_job_belongs_to_it(client, two_teams, team_b):  # noqa: F811
    client.force_login(two_teams)
    page = client.get("/jobs/new/").content.decode()
    select = page.split('<select name="team"')[1].split("</select>")[0]
    assert '<option value="team-a">Team A</option>' in select and '<option value="team-b">Team B</option>' in select
    r = client.post("/jobs/new/", {**JOB, "team": "team-b"})
    assert r.status_code == 302, r.content.decode()
    assert Job.objects.get().team == team_b


def test_a_user_with_one_team_sees_no_select_and_submits_for_it(client, owner, team_a):  # noqa: F811
    client.force_login(owner)
    assert 'name="team"' not in client.get("/jobs/new/").content.decode()
    assert client.post("/jobs/new/", JOB).status_code == 302
    assert Job.objects.get().team == team_a


def test_a_team_the_user_only_views_is_not_offered_nor_taken(client, django_user_model, team_a, team_b):  # noqa: F811
    user = member(django_user_model, "vera", team_a, "operator")
    service.set_role(None, team_b, user, "viewer")
    other = service.create_team(None, "team-c", "Team C")
    service.set_role(None, other, user, "operator")
    client.force_login(user)
    assert (
        "team-b" not in client.get("/jobs/new/").content.decode().split('<select name="team"')[1].split("</select>")[0]
    )
    r = client.post("/jobs/new/", {**JOB, "team": "team-b"})
    assert r.status_code == 200 and not Job.objects.exists()
    assert "Select a valid choice" in r.content.decode()
