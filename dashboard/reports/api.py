"""JSON API of the reports app: chargeback per team."""

from __future__ import annotations

from ninja import Router
from ninja.errors import HttpError

from dashboard.accounts.auth import USER_AUTH
from dashboard.core.periods import PeriodError

from . import team_views

router = Router(tags=["reports"])


@router.get("/reports/teams", auth=USER_AUTH, summary="Chargeback per team for a period (your teams; admins: all)")
def teams(request, period: str = "month", date: str = "", tz: str = "", since: str = "", until: str = ""):
    """`period` day/week/month containing `date`, or `since`/`until` for a custom range."""
    params = {"period": period, "date": date, "tz": tz}
    if since:
        params = {"from": since, "to": until, "tz": tz}
    try:
        p = team_views._period({k: v for k, v in params.items() if v})
    except PeriodError as exc:
        raise HttpError(400, str(exc)) from None
    return {
        "start": p.start.isoformat(),
        "end": p.end.isoformat(),
        "teams": team_views.rows_for(request.user, p.start, p.end),
    }
