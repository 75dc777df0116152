"""The team page: members, roles, quotas and usage for the team's members; edits for its admins
only, each audited; nothing for a stranger."""

from __future__ import annotations

import pytest

from dashboard.jobs.models import AuditEvent, Job
from dashboard.jobs.tests.conftest import member, owner, stranger, team_a, team_b, teammate  # noqa: F401
from dashboard.teams import service
from dashboard.teams.models import Membership, Team

pytestmark = pytest.mark.django_db


@pytest.fixture
def lead(django_user_model, team_a):  # noqa: F811
    return member(django_user_model, "lena", team_a, "admin")


def test_a_member_sees_members_roles_quota_and_usage_but_no_forms(client, owner, teammate, team_a):  # noqa: F811
    Team.objects.filter(pk=team_a.pk).update(gpu_quota=4)
    Job.objects.create(owner=owner, team=team_a, name="j", kind="train", argv=["x"], status="running", gpus=2)
    client.force_login(teammate)
    page = client.get("/teams/team-a/").content.decode()
    assert 'data-user="alice"' in page and 'data-user="amy"' in page and "Operator" in page
    assert 'data-figure="gpus">2<' in page and "of 4" in page
    assert 'id="team-settings"' not in page and 'id="member-form"' not in page
    r = client.post("/teams/team-a/", {"action": "settings", "team-gpu_quota": "99", "team-share": "1"})
    assert r.status_code == 403 and Team.objects.get(pk=team_a.pk).gpu_quota == 4
    assert 'data-team="team-a"' in client.get("/teams/").content.decode()


def test_a_stranger_gets_404_and_does_not_see_the_team_listed(client, stranger, team_a):  # noqa: F811
    client.force_login(stranger)
    assert client.get("/teams/team-a/").status_code == 404
    assert client.post("/teams/team-a/", {"action": "remove"}).status_code == 404
    assert 'data-team="team-a"' not in client.get("/teams/").content.decode()


def test_a_team_admin_changes_the_quota_and_it_is_audited(client, lead, team_a):  # noqa: F811
    client.force_login(lead)
    form = {
        "action": "settings",
        "team-share": "2",
        "team-gpu_quota": "8",
        "team-gpu_hours_quota": "",
        "team-quota_period": "week",
        "team-report_emails": "lead@example.org",
        "team-report_webhook": "",
        "team-time_zone": "Europe/Berlin",
    }
    assert client.post("/teams/team-a/", form).status_code == 302
    team = Team.objects.get(pk=team_a.pk)
    assert (team.share, team.gpu_quota, team.quota_period, team.time_zone) == (2.0, 8, "week", "Europe/Berlin")
    event = AuditEvent.objects.get(action="team.quota")
    assert event.actor == lead and event.detail["changes"]["gpu_quota"] == [None, 8]
    bad = client.post("/teams/team-a/", {**form, "team-time_zone": "Mars/Olympus"})
    assert bad.status_code == 400 and "not an IANA time zone" in bad.content.decode()


def test_a_team_admin_adds_changes_and_removes_members_each_audited(client, lead, teammate, stranger, team_a):  # noqa: F811
    client.force_login(lead)
    assert (
        client.post(
            "/teams/team-a/", {"action": "member", "member-username": "bob", "member-role": "viewer"}
        ).status_code
        == 302
    )
    assert (
        client.post(
            "/teams/team-a/", {"action": "member", "member-username": "amy", "member-role": "operator"}
        ).status_code
        == 302
    )
    amy = Membership.objects.get(team=team_a, user=teammate)
    assert amy.role == "operator"
    assert client.post("/teams/team-a/", {"action": "remove", "membership": amy.pk}).status_code == 302
    assert not Membership.objects.filter(pk=amy.pk).exists()
    assert list(AuditEvent.objects.filter(actor=lead).order_by("pk").values_list("action", flat=True)) == [
        "team.member_add",
        "team.role",
        "team.member_remove",
    ]
    r = client.post("/teams/team-a/", {"action": "member", "member-username": "nobody", "member-role": "viewer"})
    assert r.status_code == 400 and "No user has that name." in r.content.decode()


def test_staff_edit_any_team(client, admin_user, team_b):  # noqa: F811
    client.force_login(admin_user)
    assert 'id="team-settings"' in client.get("/teams/team-b/").content.decode()
    service.update_team(admin_user, team_b, name="Team B2")
    assert "Team B2" in client.get("/teams/").content.decode()
