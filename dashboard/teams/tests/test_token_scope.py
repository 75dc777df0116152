"""Creating a personal token limited to some of one's teams on the tokens page."""

from __future__ import annotations

import pytest

from dashboard.accounts.models import ApiToken
from dashboard.teams import access, service
from dashboard.teams.models import TokenScope

pytestmark = pytest.mark.django_db


@pytest.fixture
def teams(db):
    return service.create_team(None, "infra", "Infra"), service.create_team(None, "research", "Research")


@pytest.fixture
def member(django_user_model, teams):
    user = django_user_model.objects.create_user("tess", password="tess-pass")
    service.set_role(None, teams[0], user, "admin")
    service.set_role(None, teams[1], user, "viewer")
    return user


def test_a_member_of_two_teams_creates_a_token_for_one_and_it_acts_only_there(client, member, teams):
    client.force_login(member)
    page = client.get("/account/tokens/").content.decode()
    assert 'name="team" value="infra"' in page and 'name="team" value="research"' in page
    page = client.post("/account/tokens/", {"name": "ci", "team": ["research"]}).content.decode()
    token = page.split('<pre class="command">')[1].split("</pre>")[0]
    assert [s.team.slug for s in TokenScope.objects.all()] == ["research"]
    user = ApiToken.authenticate(token)
    assert access.team_roles(user) == {teams[1].pk: "viewer"}
    assert "Research" in client.get("/account/tokens/").content.decode().split('id="tokens"')[1]


def test_no_team_ticked_makes_a_token_for_all_ones_teams(client, member):
    client.force_login(member)
    client.post("/account/tokens/", {"name": "all"})
    assert ApiToken.objects.count() == 1 and not TokenScope.objects.exists()


def test_a_team_one_is_not_in_is_refused_and_no_token_is_made(client, member, django_user_model):
    other = service.create_team(None, "secret", "Secret")
    client.force_login(member)
    r = client.post("/account/tokens/", {"name": "sneaky", "team": ["infra", other.slug]})
    assert "team: you are not in secret" in r.content.decode()
    assert not ApiToken.objects.exists() and not TokenScope.objects.exists()


def test_a_user_with_one_team_is_offered_no_team_boxes(client, django_user_model, teams):
    user = django_user_model.objects.create_user("solo", password="solo-pass")
    service.set_role(None, teams[0], user, "operator")
    client.force_login(user)
    assert 'name="team"' not in client.get("/account/tokens/").content.decode()
