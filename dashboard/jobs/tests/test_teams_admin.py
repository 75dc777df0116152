"""Teams managed in the admin are audited like any other change."""

from __future__ import annotations

import pytest

from dashboard.jobs.models import AuditEvent
from dashboard.teams.models import Membership, Team

pytestmark = pytest.mark.django_db


def test_an_admin_creates_a_team_with_a_member_and_both_are_audited(client, admin_user, owner):
    client.force_login(admin_user)
    r = client.post(
        "/admin/teams/team/add/",
        {
            "name": "Vision",
            "slug": "vision",
            "share": "2",
            "gpu_quota": "8",
            "gpu_hours_quota": "",
            "quota_period": "month",
            "report_emails": "",
            "report_webhook": "",
            "memberships-TOTAL_FORMS": "1",
            "memberships-INITIAL_FORMS": "0",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
            "memberships-0-user": str(owner.pk),
            "memberships-0-role": "admin",
        },
    )
    assert r.status_code == 302, r.context["errors"] if r.context else r.status_code
    team = Team.objects.get(slug="vision")
    assert (team.share, team.gpu_quota) == (2.0, 8)
    assert Membership.objects.get(team=team, user=owner).role == "admin"
    actions = list(AuditEvent.objects.filter(actor=admin_user).values_list("action", flat=True))
    assert actions == ["team.member_add", "team.create"]  # newest first


def test_a_non_staff_user_cannot_open_the_teams_admin(client, owner):
    client.force_login(owner)
    assert client.get("/admin/teams/team/").status_code == 302
