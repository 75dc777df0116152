"""Who may see and do what in which team: the one place every page, API call and job path asks.

A user's teams are their memberships. A user in no team belongs to the default team with the
role their global group gives (``operator`` group: operator, else viewer), so an install that
never creates a team works as before. Staff users are admins of every team and see everything.
A personal API token limited to some teams (``TokenScope``) acts only for those.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from django.db.models import Q, QuerySet

from dashboard.accounts.models import is_operator

from .models import Membership, Team, TokenScope, default_team_id

Role = Membership.Role
SUBMIT_ROLES = (Role.OPERATOR, Role.ADMIN)


def _token_teams(user: Any) -> set[int] | None:
    token = getattr(user, "api_token", None)  # set by ApiToken.authenticate for token requests
    if token is None:
        return None
    scoped = set(TokenScope.objects.filter(token=token).values_list("team_id", flat=True))
    return scoped or None


def team_roles(user: Any) -> dict[int, str]:
    """Team id -> the user's role there, as this request may use it (staff: every team, admin)."""
    if not getattr(user, "is_authenticated", False):
        return {}
    cached = getattr(user, "_team_roles", None)
    if cached is not None:
        return cached
    if user.is_staff:
        roles = dict.fromkeys(Team.objects.values_list("pk", flat=True), Role.ADMIN.value)
        roles.setdefault(default_team_id(), Role.ADMIN.value)
    else:
        roles = dict(Membership.objects.filter(user=user).values_list("team_id", "role"))
        if not roles:
            roles = {default_team_id(): Role.OPERATOR.value if is_operator(user) else Role.VIEWER.value}
    scoped = _token_teams(user)
    if scoped is not None:
        roles = {t: r for t, r in roles.items() if t in scoped}
    user._team_roles = roles
    return roles


def sees_everything(user: Any) -> bool:
    return bool(getattr(user, "is_staff", False) and _token_teams(user) is None)


def visible_team_ids(user: Any) -> set[int] | None:
    """The teams whose jobs and machines ``user`` may see; None means all of them."""
    return None if sees_everything(user) else set(team_roles(user))


def scope_jobs(qs: QuerySet, user: Any) -> QuerySet:
    """Jobs of the user's teams (a queryset of ``jobs.Job``)."""
    teams = visible_team_ids(user)
    return qs if teams is None else qs.filter(team_id__in=teams)


def scope_machines(qs: QuerySet, user: Any) -> QuerySet:
    """Machines of the user's teams and of the shared pool (a queryset of ``fleet.Machine``)."""
    return within_teams(qs, visible_team_ids(user))


def within_teams(qs: QuerySet, teams: Collection[int] | None) -> QuerySet:
    """Machines of ``teams`` and of the shared pool (None: every machine), for callers that hold
    the team ids rather than the user."""
    return qs if teams is None else qs.filter(Q(team__isnull=True) | Q(team_id__in=teams))


def can_see(user: Any, team_id: int | None) -> bool:
    """Whether an object of ``team_id`` (None: the shared pool) is visible to ``user``."""
    teams = visible_team_ids(user)
    return teams is None or team_id is None or team_id in teams


def submit_teams(user: Any) -> list[Team]:
    """Teams ``user`` may submit jobs for, by name."""
    ids = [t for t, role in team_roles(user).items() if role in SUBMIT_ROLES]
    return list(Team.objects.filter(pk__in=ids).order_by("name"))


def can_submit(user: Any, team_id: int | None = None) -> bool:
    """May submit for ``team_id``, or for at least one team when it is None."""
    roles = team_roles(user)
    if team_id is None:
        return any(r in SUBMIT_ROLES for r in roles.values())
    return roles.get(team_id) in SUBMIT_ROLES


def is_team_admin(user: Any, team_id: int) -> bool:
    return team_roles(user).get(team_id) == Role.ADMIN


def team_for_submit(user: Any, slug: str | None) -> Team | None:
    """The team a submission is for: the named one, else the user's only (or default) team."""
    if slug:
        return Team.objects.filter(slug=slug).first()
    teams = submit_teams(user)
    if len(teams) == 1:
        return teams[0]
    if not teams and len(team_roles(user)) == 1:  # a viewer of one team: the role check then says no
        return Team.objects.get(pk=next(iter(team_roles(user))))
    default = Team.objects.get(pk=default_team_id())
    return default if any(t.pk == default.pk for t in teams) else None
