"""The nav link's open-alert count and the fleet page's banner, computed only when a page shows them."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from django.http import HttpRequest

from .models import Alert

BANNER_ALERTS = 5


class AlertsSummary:
    @cached_property
    def open_count(self) -> int:
        return Alert.objects.filter(resolved_at=None).count()

    @cached_property
    def latest(self) -> list[Alert]:
        return list(Alert.objects.filter(resolved_at=None).select_related("rule", "machine")[:BANNER_ALERTS])


def alerts(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"alerts_summary": AlertsSummary()}
