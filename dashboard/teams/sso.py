"""Single sign-on: OIDC login (mozilla-django-oidc) whose group claims set the user's teams and roles.

Off unless ``OIDC_RP_CLIENT_ID`` is set; local accounts keep working beside it. The provider's
endpoints come from ``OIDC_OP_DISCOVERY_URL`` (its ``/.well-known/openid-configuration``, read once
per process) unless set one by one (``OIDC_OP_AUTHORIZATION_ENDPOINT``...), which win.

Users are found by the provider's subject (``sub``, kept in ``SsoIdentity``), never by e-mail, so
an address at the provider cannot take over a local account. On every login the groups claim
(``OIDC_GROUPS_CLAIM``) is mapped through ``OIDC_TEAM_ROLES`` (``group=team-slug:role,...``): the
user gets each mapped team with the highest role any of their groups gives (a team the mapping
names that does not exist yet is created), and loses the memberships an earlier login gave that no
group maps any more. Memberships an admin set by hand are left alone unless a group maps the same
team, which then manages it. Every change goes through ``teams.service`` and is audited.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import path
from django.utils import timezone
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from . import service
from .models import Membership, SsoIdentity, Team

log = logging.getLogger(__name__)

SOURCE = "oidc"  # Membership.source of the memberships single sign-on manages
RANK = {Membership.Role.VIEWER: 0, Membership.Role.OPERATOR: 1, Membership.Role.ADMIN: 2}
# Settings read from the discovery document when not set: setting -> the document's key.
OPTIONAL = {"OIDC_OP_USER_ENDPOINT"}  # without it, the ID token's claims are all there is
DISCOVERED = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}
_discovery: dict[str, dict[str, Any]] = {}


def enabled() -> bool:
    return bool(getattr(settings, "OIDC_RP_CLIENT_ID", ""))


def login_label() -> str:
    """What the login page's SSO button is for; empty when single sign-on is off (no button)."""
    return "SSO" if enabled() else ""


def parse_team_roles(text: str) -> dict[str, list[tuple[str, str]]]:
    """``"ml-infra=infra:admin,researchers=research:operator"`` -> group -> [(team slug, role)].

    A group may appear more than once (several teams). Raises ValueError naming the bad item."""
    mapping: dict[str, list[tuple[str, str]]] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        group, _, target = item.rpartition("=")
        slug, _, role = target.partition(":")
        group, slug, role = group.strip(), slug.strip(), role.strip()
        if not group or not slug or role not in Membership.Role.values:
            raise ValueError(
                f"OIDC_TEAM_ROLES: {item!r} is not group=team-slug:role with a role of "
                f"{', '.join(Membership.Role.values)}"
            )
        mapping.setdefault(group, []).append((slug, role))
    return mapping


def wanted_roles(groups: list[str], mapping: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    """Team slug -> the highest role the user's ``groups`` give there."""
    wanted: dict[str, str] = {}
    for group in groups:
        for slug, role in mapping.get(group, []):
            if slug not in wanted or RANK[role] > RANK[wanted[slug]]:
                wanted[slug] = role
    return wanted


def groups_of(claims: dict[str, Any]) -> list[str]:
    """The groups claim as a list; a dotted name reads a nested claim (``realm_access.roles``)."""
    value: Any = claims
    for key in settings.OIDC_GROUPS_CLAIM.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else []


def sync_teams(user: Any, groups: list[str]) -> None:
    """Give ``user`` the teams and roles ``groups`` map to; take away the ones no group maps any more."""
    wanted = wanted_roles(groups, parse_team_roles(settings.OIDC_TEAM_ROLES))
    with transaction.atomic():
        teams = {t.slug: t for t in Team.objects.filter(slug__in=wanted)}
        for slug, role in sorted(wanted.items()):
            team = teams.get(slug) or service.create_team(None, slug, slug)
            service.set_role(None, team, user, role, source=SOURCE)
        stale = Membership.objects.filter(user=user, source=SOURCE).exclude(team__slug__in=wanted)
        for membership in stale.select_related("team", "user"):
            service.remove_member(None, membership)


def setting(attr: str, *default: Any) -> Any:
    """mozilla-django-oidc's settings lookup, with endpoints from the discovery document when unset."""
    value = getattr(settings, attr, None)
    if value not in (None, ""):
        return value
    if attr in DISCOVERED and settings.OIDC_OP_DISCOVERY_URL:
        found = discovery(settings.OIDC_OP_DISCOVERY_URL).get(DISCOVERED[attr])
        if found:
            return found
    if default:
        return default[0]
    if attr in OPTIONAL:
        return None
    raise ImproperlyConfigured(f"{attr} is not set (nor found through OIDC_OP_DISCOVERY_URL)")


def discovery(url: str) -> dict[str, Any]:
    """The provider's discovery document, fetched once per process (a failure is retried next time)."""
    if url not in _discovery:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        _discovery[url] = response.json()
    return _discovery[url]


def _free_username(claims: dict[str, Any]) -> str:
    User = get_user_model()
    email = claims.get("email") or ""
    base = (claims.get(settings.OIDC_USERNAME_CLAIM) or email.split("@")[0] or claims["sub"])[:140]
    name, n = base, 1
    while User.objects.filter(username=name).exists():  # a local account keeps its name
        n += 1
        name = f"{base}-{n}"
    return name


class Backend(OIDCAuthenticationBackend):
    """Log in by the provider's subject; copy name and e-mail, and map groups to teams, at each login."""

    get_settings = staticmethod(setting)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Django builds every backend for each password login too: that must neither wait on nor fail
        # with the provider, so the endpoints are read only when a provider's answer comes back.
        self.UserModel = get_user_model()

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> Any:
        if request is None or "code" not in request.GET or "state" not in request.GET:
            return None
        try:
            super().__init__()
            user = super().authenticate(request, **kwargs)
        except requests.RequestException as exc:  # the provider is down or refused the code: the login page says so
            log.warning("single sign-on failed: %s", exc)
            return None
        if user is not None and not self.user_can_authenticate(user):
            return None  # an admin deactivated the account: the provider's word does not revive it
        return user

    def get_userinfo(self, access_token: str, id_token: str, payload: dict[str, Any]) -> dict[str, Any]:
        # The verified ID token's claims, completed by the userinfo endpoint where the provider has one.
        claims = dict(payload)
        if setting("OIDC_OP_USER_ENDPOINT", None):
            info = super().get_userinfo(access_token, id_token, payload)
            if info.get("sub") != payload.get("sub"):
                raise SuspiciousOperation("the userinfo subject differs from the ID token's")
            claims.update(info)
        return claims

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        return bool(claims.get("sub"))

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        return self.UserModel.objects.filter(sso_identity__subject=claims["sub"])

    def create_user(self, claims: dict[str, Any]) -> Any:
        with transaction.atomic():
            user = self.UserModel.objects.create_user(_free_username(claims), email=claims.get("email") or "")
            user.set_unusable_password()  # signs in through the provider only
            user.save(update_fields=["password"])
            SsoIdentity.objects.create(user=user, subject=claims["sub"])
        return self.update_user(user, claims)

    def update_user(self, user: Any, claims: dict[str, Any]) -> Any:
        fields = {
            "email": claims.get("email") or user.email,
            "first_name": (claims.get("given_name") or user.first_name)[:150],
            "last_name": (claims.get("family_name") or user.last_name)[:150],
        }
        changed = [k for k, v in fields.items() if getattr(user, k) != v]
        for k in changed:
            setattr(user, k, fields[k])
        if changed:
            user.save(update_fields=changed)
        SsoIdentity.objects.filter(user=user).update(last_login_at=timezone.now())
        sync_teams(user, groups_of(claims))
        return user


class _Start(OIDCAuthenticationRequestView):
    get_settings = staticmethod(setting)


class _Callback(OIDCAuthenticationCallbackView):
    get_settings = staticmethod(setting)


def start(request: HttpRequest) -> HttpResponse:
    """ "Sign in with SSO": to the provider's login page (404 while single sign-on is off)."""
    if not enabled():
        raise Http404("single sign-on is not configured")
    return _Start.as_view()(request)


def callback(request: HttpRequest) -> HttpResponse:
    """Where the provider sends the browser back with a code: log in, then to ``next`` or the fleet."""
    if not enabled():
        raise Http404("single sign-on is not configured")
    return _Callback.as_view()(request)


# Mounted at /oidc/ by dashboard/urls.py; mozilla-django-oidc reverses these names, without a namespace.
urlpatterns = [
    path("authenticate/", start, name="oidc_authentication_init"),
    path("callback/", callback, name="oidc_authentication_callback"),
]
