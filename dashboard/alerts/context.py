"""The nav link's open-alert count and the fleet page's banner, computed only when a page shows them."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from django.db.models import Q, QuerySet
from django.http import HttpRequest

from dashboard.fleet import visibility
from dashboard.teams import access as team_access

from .models import Alert

BANNER_ALERTS = 5


def visible_alerts(user: Any, qs: QuerySet[Alert] | None = None) -> QuerySet[Alert]:
    """Alerts about machines ``user`` may see, and those about no machine: an alert names its
    machine, so another team's machine's alerts are not shown."""
    qs = Alert.objects.all() if qs is None else qs
    if team_access.visible_team_ids(user) is None:
        return qs
    return qs.filter(Q(machine__isnull=True) | Q(machine__in=visibility.visible_machines(user).values("pk")))


class AlertsSummary:
    def __init__(self, user: Any):
        self.user = user

    @cached_property
    def open_count(self) -> int:
        return visible_alerts(self.user).filter(resolved_at=None).count()

    @cached_property
    def latest(self) -> list[Alert]:
        open_alerts = visible_alerts(self.user).filter(resolved_at=None)
        return list(open_alerts.select_related("rule", "machine")[:BANNER_ALERTS])


def alerts(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"alerts_summary": AlertsSummary(user)}
