"""Single sign-on without a browser: the mapping of groups to teams on every login, the settings
checks, the login page offering both ways in, and login throttling beside the OIDC backend.
(``test_sso_browser.py`` logs in through Chromium at a real provider.)"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.management import call_command

from dashboard.teams import checks, sso
from dashboard.teams.models import Membership, SsoIdentity, Team
from dashboard.teams.signals import changed

MAPPING = "ml-infra=infra:admin,researchers=research:operator,everyone=research:viewer,ml-infra=research:viewer"


@pytest.fixture
def audit_log():
    events: list[tuple[str, dict]] = []

    def record(sender, actor, action, detail, **kwargs):
        events.append((action, detail))

    changed.connect(record, dispatch_uid="test_sso.audit")
    yield events
    changed.disconnect(dispatch_uid="test_sso.audit")


@pytest.fixture
def sso_on(settings):
    settings.OIDC_RP_CLIENT_ID = "hwdash"
    settings.OIDC_RP_CLIENT_SECRET = "secret"
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = "https://idp.example.org/authorize"
    settings.OIDC_OP_TOKEN_ENDPOINT = "https://idp.example.org/token"
    settings.OIDC_OP_JWKS_ENDPOINT = "https://idp.example.org/jwks"
    settings.OIDC_TEAM_ROLES = MAPPING
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, "dashboard.teams.sso.Backend"]
    return settings


def roles(user) -> dict[str, tuple[str, str]]:
    return {m.team.slug: (m.role, m.source) for m in Membership.objects.filter(user=user).select_related("team")}


def test_the_mapping_reads_groups_teams_and_roles_and_names_a_bad_item():
    mapping = sso.parse_team_roles(MAPPING)
    assert mapping["ml-infra"] == [("infra", "admin"), ("research", "viewer")]
    assert sso.wanted_roles(["researchers", "everyone", "unmapped"], mapping) == {"research": "operator"}
    with pytest.raises(ValueError, match="'researchers=research:boss' is not group=team-slug:role"):
        sso.parse_team_roles("researchers=research:boss")


def test_the_groups_claim_may_be_a_string_a_list_or_nested(settings):
    assert sso.groups_of({"groups": "a"}) == ["a"]
    assert sso.groups_of({"groups": ["a", "b"]}) == ["a", "b"]
    assert sso.groups_of({}) == []
    settings.OIDC_GROUPS_CLAIM = "realm_access.roles"
    assert sso.groups_of({"realm_access": {"roles": ["x"]}}) == ["x"]


@pytest.mark.django_db
def test_each_login_adds_changes_and_removes_the_memberships_groups_give(sso_on, django_user_model, audit_log):
    rita = django_user_model.objects.create_user("rita")
    sso.sync_teams(rita, ["researchers"])
    assert roles(rita) == {"research": ("operator", "oidc")}
    assert Team.objects.filter(slug="research").exists()  # the mapping names it: created, audited
    assert ("team.create", {"team": "research", "name": "research"}) in audit_log

    sso.sync_teams(rita, ["ml-infra"])  # moved: admin of infra, only a viewer of research now
    assert roles(rita) == {"infra": ("admin", "oidc"), "research": ("viewer", "oidc")}
    assert ("team.role", {"team": "research", "user": "rita", "role": ["operator", "viewer"], "source": "oidc"}) in (
        audit_log
    )

    sso.sync_teams(rita, [])  # left every group
    assert roles(rita) == {}
    removed = [d["team"] for a, d in audit_log if a == "team.member_remove"]
    assert sorted(removed) == ["infra", "research"]


@pytest.mark.django_db
def test_a_membership_an_admin_gave_by_hand_stays_when_no_group_maps_its_team(sso_on, django_user_model):
    rita = django_user_model.objects.create_user("rita")
    lab = Team.objects.create(slug="lab", name="Lab")
    Membership.objects.create(user=rita, team=lab, role="admin")
    sso.sync_teams(rita, ["researchers"])
    sso.sync_teams(rita, [])
    assert roles(rita) == {"lab": ("admin", "")}


@pytest.mark.django_db
def test_users_are_found_by_subject_never_by_email(sso_on, django_user_model):
    admin = django_user_model.objects.create_superuser("admin", "boss@example.org", "admin-pass")
    backend = sso.Backend()
    claims = {"sub": "abc", "email": "boss@example.org", "preferred_username": "admin", "groups": ["researchers"]}
    assert not backend.filter_users_by_claims(claims).exists()
    user = backend.create_user(claims)
    assert user != admin and user.username == "admin-2"  # the local admin keeps its name and account
    assert not user.has_usable_password() and not user.is_staff
    assert SsoIdentity.objects.get(subject="abc").user == user
    assert list(backend.filter_users_by_claims(claims)) == [user]
    assert roles(user) == {"research": ("operator", "oidc")}


def test_a_bad_mapping_and_a_half_configured_client_are_system_check_errors(settings):
    settings.OIDC_TEAM_ROLES = "researchers"
    settings.OIDC_RP_CLIENT_ID, settings.OIDC_RP_CLIENT_SECRET = "hwdash", ""
    settings.OIDC_OP_DISCOVERY_URL = settings.OIDC_OP_TOKEN_ENDPOINT = ""
    ids = [e.id for e in checks.oidc_settings(None)]
    assert ids == ["teams.E001", "teams.E002", "teams.E003"]
    settings.OIDC_RP_CLIENT_ID = ""
    settings.OIDC_TEAM_ROLES = ""
    assert checks.oidc_settings(None) == []


@pytest.mark.django_db
def test_the_login_page_offers_sso_only_when_it_is_configured(client, settings):
    settings.OIDC_RP_CLIENT_ID = ""
    page = client.get("/login/").content.decode()
    assert 'name="password"' in page and "Sign in with SSO" not in page
    assert client.get("/oidc/authenticate/").status_code == 404


@pytest.mark.django_db
def test_sign_in_with_sso_sends_the_browser_to_the_provider_with_pkce_and_the_next_page(client, sso_on):
    page = client.get("/login/?next=/jobs/").content.decode()
    assert 'name="password"' in page and "Sign in with SSO" in page and "/oidc/authenticate/?next=/jobs/" in page
    response = client.get("/oidc/authenticate/?next=/jobs/")
    assert response.status_code == 302
    url = urlsplit(response["Location"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == "https://idp.example.org/authorize"
    query = parse_qs(url.query)
    assert query["client_id"] == ["hwdash"] and query["code_challenge_method"] == ["S256"]
    assert query["redirect_uri"] == ["http://testserver/oidc/callback/"]
    assert client.session["oidc_login_next"] == "/jobs/"


@pytest.mark.django_db
def test_password_guessing_is_still_locked_out_with_sso_on(client, sso_on, viewer):
    for _ in range(4):
        assert client.post("/login/", {"username": "victor", "password": "guess"}).status_code == 200
    assert client.post("/login/", {"username": "victor", "password": "guess"}).status_code == 429
    assert client.post("/login/", {"username": "victor", "password": "victor-pass"}).status_code == 429
    call_command("axes_reset_username", "victor")
    assert client.post("/login/", {"username": "victor", "password": "victor-pass"}).status_code == 302


@pytest.mark.django_db
def test_a_callback_with_a_forged_code_logs_nobody_in_and_locks_nobody_out(client, sso_on, viewer):
    client.get("/oidc/authenticate/")
    state = next(iter(client.session["oidc_states"]))
    # The token endpoint is unreachable, so the code cannot be exchanged: back to the login page, no 500.
    sso_on.OIDC_OP_TOKEN_ENDPOINT = "http://127.0.0.1:9/token"
    response = client.get(f"/oidc/callback/?code=forged&state={state}")
    assert response.status_code == 302 and response["Location"] == "/login/?sso=failed"
    assert "_auth_user_id" not in client.session
    assert "Single sign-on did not log you in" in client.get(response["Location"]).content.decode()
    assert client.post("/login/", {"username": "victor", "password": "victor-pass"}).status_code == 302


@pytest.mark.django_db
def test_a_password_login_never_waits_on_an_unreachable_provider(client, sso_on, viewer):
    sso_on.OIDC_OP_DISCOVERY_URL = "http://127.0.0.1:9/.well-known/openid-configuration"
    sso_on.OIDC_OP_TOKEN_ENDPOINT = sso_on.OIDC_OP_JWKS_ENDPOINT = ""
    assert client.post("/login/", {"username": "victor", "password": "victor-pass"}).status_code == 302
