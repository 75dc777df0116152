"""``{% gpm_charts machine %}`` on the machine page, ``{% gpm_charts machine gpus=... since=... until=... %}``
on a job's page, ``{% busy_but_inefficient %}`` on the fleet page: one line each, composed by
:mod:`dashboard.web.efficiency` (the pages' own views stay as they are)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone

from dashboard.fleet.models import Machine
from dashboard.teams import access as team_access

from .. import efficiency

register = template.Library()


@register.inclusion_tag("fleet/_efficiency.html")
def gpm_charts(
    machine: Machine | None,
    gpus: list[int] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """The pages that include it have checked the user may see the machine, and pass the Machine
    they read (the machine page prefetches its accelerators, so they are not read again)."""
    if machine is None:
        return {"panel": None}
    return {"panel": efficiency.chart_panel(machine, gpus, since=since, until=until)}


@register.inclusion_tag("fleet/_inefficient.html", takes_context=True)
def busy_but_inefficient(context: dict[str, Any]) -> dict[str, Any]:
    request = context.get("request")
    teams = team_access.visible_team_ids(getattr(request, "user", None))
    return {
        "rows": efficiency.fleet_ranking(teams, timezone.now()),
        "busy": efficiency.BUSY_PERCENT,
        "low_sm": efficiency.LOW_SM_PERCENT,
        "low_tensor": efficiency.LOW_TENSOR_PERCENT,
    }
