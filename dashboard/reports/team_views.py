"""Chargeback per team: the page, its CSV and the API's query. Each user sees the teams they
belong to; admins see every team."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from dashboard.accounts.auth import token_or_session
from dashboard.core.csvfile import csv_response
from dashboard.core.periods import Period, PeriodError, resolve_period
from dashboard.teams import access
from dashboard.teams.models import Team

from . import chargeback


def _period(params: dict[str, str]) -> Period:
    # A month by default: chargeback is billed monthly more often than daily.
    return resolve_period({"period": "month", **params} if not params.get("from") else params)


def visible_teams(user: Any) -> list[Team]:
    ids = access.visible_team_ids(user)
    qs = Team.objects.order_by("name")
    return list(qs if ids is None else qs.filter(pk__in=ids))


def rows_for(user: Any, start: datetime, end: datetime) -> list[dict[str, Any]]:
    return chargeback.team_chargeback(start, end, visible_teams(user))


@token_or_session(login_page=True)
def teams_page(request: HttpRequest) -> HttpResponse:
    params = request.GET.dict()
    try:
        period = _period(params)
    except PeriodError as exc:
        return render(request, "reports/teams.html", {"error": str(exc)}, status=400)
    rows = rows_for(request.user, period.start, period.end)
    return render(
        request,
        "reports/teams.html",
        {"period": period, "rows": rows, "csv_query": request.GET.urlencode()},
    )


@token_or_session(login_page=False)
def teams_csv(request: HttpRequest) -> HttpResponse:
    try:
        period = _period(request.GET.dict())
    except PeriodError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    rows = rows_for(request.user, period.start, period.end)
    day = period.start.astimezone(period.zone).date().isoformat()
    return csv_response(chargeback.csv_rows(rows), f"teams-chargeback-{day}.csv")
