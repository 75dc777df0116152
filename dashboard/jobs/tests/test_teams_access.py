"""Each user sees their teams' jobs and machines (and the shared pool); admins see everything;
roles decide who submits and cancels; a token limited to a team acts only for it."""

from __future__ import annotations

import pytest

from dashboard.accounts.models import ApiToken
from dashboard.fleet.models import Machine
from dashboard.jobs import service as jobs_service
from dashboard.jobs.models import Job
from dashboard.teams.models import TokenScope

from .conftest import member

pytestmark = pytest.mark.django_db


def job_for(user, team, name="j") -> Job:
    return Job.objects.create(owner=user, team=team, name=name, kind="train", argv=["true"], gpus=0)


@pytest.fixture
def world(owner, teammate, stranger, team_a, team_b):
    Machine.objects.create(name="a-box", team=team_a)
    Machine.objects.create(name="b-box", team=team_b)
    Machine.objects.create(name="pool-box")
    return {"a": job_for(owner, team_a, "a-job"), "b": job_for(stranger, team_b, "b-job")}


def names(response, key):
    return sorted(item["name"] for item in response.json()[key])


def test_a_teammate_sees_the_teams_jobs_and_machines_and_the_shared_pool_only(client, teammate, world):
    client.force_login(teammate)
    assert names(client.get("/api/v1/jobs"), "jobs") == ["a-job"]
    assert names(client.get("/api/v1/machines"), "machines") == ["a-box", "pool-box"]
    assert client.get("/api/v1/machines").json()["count"] == 2
    assert client.get(f"/api/v1/jobs/{world['a'].pk}").status_code == 200
    assert client.get("/api/v1/machines/pool-box").status_code == 200


def test_a_stranger_gets_404_for_another_teams_job_and_machine(client, stranger, world):
    client.force_login(stranger)
    assert client.get(f"/api/v1/jobs/{world['a'].pk}").status_code == 404
    assert client.get(f"/api/v1/jobs/{world['a'].pk}/log").status_code == 404
    assert client.get("/api/v1/machines/a-box").status_code == 404
    assert client.get(f"/jobs/{world['a'].pk}/").status_code == 404
    assert client.get("/machines/a-box/").status_code == 404
    for panel in ("throughput", "jobs", "economics"):
        assert client.get(f"/machines/a-box/panels/{panel}/").status_code == 404, panel
    assert "a-job" not in client.get("/jobs/").content.decode()


def test_an_admin_sees_every_team(client, admin_user, world):
    client.force_login(admin_user)
    assert names(client.get("/api/v1/jobs"), "jobs") == ["a-job", "b-job"]
    assert names(client.get("/api/v1/machines"), "machines") == ["a-box", "b-box", "pool-box"]


def test_the_jobs_page_lists_the_teams_jobs_for_the_owner(client, owner, world):
    client.force_login(owner)
    page = client.get("/jobs/").content.decode()
    assert "a-job" in page and "b-job" not in page


def test_an_operator_submits_for_their_team_and_the_job_belongs_to_it(client, owner, team_a):
    client.force_login(owner)
    r = client.post("/api/v1/jobs", {"name": "x", "kind": "train", "command": ["true"], "gpus": 0}, "application/json")
    assert r.status_code == 201, r.content
    assert r.json()["team"] == "team-a"
    assert Job.objects.get(pk=r.json()["id"]).team == team_a


def test_a_viewer_may_not_submit_for_the_team(client, teammate):
    client.force_login(teammate)
    r = client.post("/api/v1/jobs", {"name": "x", "kind": "train", "command": ["true"], "gpus": 0}, "application/json")
    assert r.status_code == 403
    assert r.json() == {"error": "only operators and admins may submit jobs (for team team-a)"}


def test_nobody_submits_for_a_team_they_are_not_in(client, owner, team_b):
    client.force_login(owner)
    body = {"name": "x", "kind": "train", "command": ["true"], "gpus": 0, "team": "team-b"}
    r = client.post("/api/v1/jobs", body, "application/json")
    assert r.status_code == 400 and r.json() == {"error": "team: no team named 'team-b'"}


def test_a_user_in_two_teams_names_the_team(client, django_user_model, team_a, team_b):
    both = member(django_user_model, "carol", team_a, "operator")
    from dashboard.teams import service

    service.set_role(None, team_b, both, "operator")
    client.force_login(both)
    body = {"name": "x", "kind": "train", "command": ["true"], "gpus": 0}
    assert client.post("/api/v1/jobs", body, "application/json").status_code == 400
    r = client.post("/api/v1/jobs", {**body, "team": "team-b"}, "application/json")
    assert r.status_code == 201 and r.json()["team"] == "team-b"


def test_a_team_admin_cancels_a_teammates_job_and_a_stranger_cannot(django_user_model, owner, stranger, team_a):
    job = job_for(owner, team_a)
    lead = member(django_user_model, "lena", team_a, "admin")
    assert not jobs_service.can_cancel(stranger, job)
    assert jobs_service.can_cancel(lead, job)
    assert jobs_service.cancel(lead, job).status == "cancelled"


def test_a_token_limited_to_one_team_sees_only_that_team(client, django_user_model, team_a, team_b, world):
    both = member(django_user_model, "carol", team_a, "viewer")
    from dashboard.teams import service

    service.set_role(None, team_b, both, "viewer")
    token = ApiToken.issue(both, "ci")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert names(client.get("/api/v1/jobs", **auth), "jobs") == ["a-job", "b-job"]
    TokenScope.objects.create(token=ApiToken.objects.get(user=both), team=team_b)
    assert names(client.get("/api/v1/jobs", **auth), "jobs") == ["b-job"]
    assert names(client.get("/api/v1/machines", **auth), "machines") == ["b-box", "pool-box"]


def test_a_user_in_no_team_is_in_the_default_team_with_their_global_role(client, operator, viewer):
    client.force_login(operator)
    r = client.post("/api/v1/jobs", {"name": "x", "kind": "train", "command": ["true"], "gpus": 0}, "application/json")
    assert r.status_code == 201 and r.json()["team"] == "default"
    client.force_login(viewer)
    assert names(client.get("/api/v1/jobs"), "jobs") == ["x"]
