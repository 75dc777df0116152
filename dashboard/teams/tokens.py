"""Personal tokens limited to teams: the tokens page's team boxes become ``TokenScope`` rows."""

from __future__ import annotations

from typing import Any

from dashboard.accounts.signals import TokenRefused

from . import access
from .models import Team, TokenScope


def own_teams(user: Any) -> list[Team]:
    """The teams a token of ``user`` may be limited to: the user's own (every team for staff)."""
    return list(Team.objects.filter(pk__in=list(access.team_roles(user))).order_by("name"))


def scope_new_token(sender: Any, token: Any, request: Any, **kwargs: Any) -> None:
    """Limit ``token`` to the teams the form ticked (POST ``team``, slugs); none ticked: all the user's."""
    slugs = set(request.POST.getlist("team"))
    if not slugs:
        return
    allowed = {t.slug: t for t in own_teams(request.user)}
    foreign = sorted(slugs - set(allowed))
    if foreign:
        raise TokenRefused(f"team: you are not in {', '.join(foreign)}; a token acts only for your own teams")
    TokenScope.objects.bulk_create(TokenScope(token=token, team=allowed[s]) for s in sorted(slugs))
