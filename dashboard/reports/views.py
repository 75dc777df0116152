"""Report pages and their CSV downloads: parse the period, call report.py, render.

Pages are for people (times in the browser's zone, sent as ``tz`` by static/js/report.js); CSV is
for scripts, which may authenticate with a personal API token (``Authorization: Bearer hwu_...``)
instead of a session.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from dashboard.accounts.auth import token_or_session
from dashboard.core.csvfile import csv_response
from dashboard.core.periods import Period, PeriodError, resolve_period, shift_period
from dashboard.economics.roi import DEFAULT_IDLE_BELOW_PERCENT
from dashboard.fleet import visibility
from dashboard.fleet.models import Machine

from . import report
from .report import ReportError


def _idle_below(params: dict[str, str]) -> float:
    raw = params.get("idle_below_percent", "").strip()
    if not raw:
        return DEFAULT_IDLE_BELOW_PERCENT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise ReportError(f"idle_below_percent: expected a number from 0 to 100; got {raw!r}")
    return value


def _form(params: dict[str, str], period: Period | None, idle_below: float | None) -> dict[str, Any]:
    """What the period picker shows: the request's choices, or the resolved period's."""
    zone = period.zone if period else None
    # The app's one format (ISO, 24 h) in the user's zone; the inputs are text, not the browser's
    # date pickers, which would show the locale's format (11/30/2026, 12:18 AM).
    local = (lambda t: t.astimezone(zone).strftime("%Y-%m-%d %H:%M")) if zone else (lambda t: "")
    kind = period.kind if period else (params.get("period") or "day")
    return {
        "period": kind,
        "date": (params.get("date") or (period.start.astimezone(zone).date().isoformat() if period else "")),
        "from": local(period.start) if period and kind == "custom" else params.get("from", ""),
        "to": local(period.end) if period and kind == "custom" else params.get("to", ""),
        "tz": params.get("tz", ""),
        "idle_below_percent": idle_below if idle_below is not None else params.get("idle_below_percent", ""),
        "kinds": [("day", "Day"), ("week", "Week"), ("month", "Month"), ("custom", "Custom")],
    }


def _exact_query(period: Period, idle_below: float) -> str:
    """The same report with every boundary spelled out, so the CSV is the page's figures."""
    zone = period.zone
    return urlencode(
        {
            "from": period.start.astimezone(zone).isoformat(),
            "to": period.end.astimezone(zone).isoformat(),
            "previous_from": period.previous_start.astimezone(zone).isoformat(),
            "previous_to": period.previous_end.astimezone(zone).isoformat(),
            "tz": period.zone_name,
            "idle_below_percent": f"{idle_below:g}",
        }
    )


def _neighbours(params: dict[str, str], period: Period) -> dict[str, str | None]:
    """Query strings of the calendar periods before and after this one (None: in the future)."""
    if period.kind == "custom":
        return {}
    first = period.start.astimezone(period.zone).date()
    base = {k: v for k, v in params.items() if k in ("period", "tz", "idle_below_percent")}
    base["period"] = period.kind
    before = urlencode({**base, "date": shift_period(period.kind, first, -1).isoformat()})
    after = None if period.partial else urlencode({**base, "date": shift_period(period.kind, first, 1).isoformat()})
    return {"before": before, "after": after}


def _bad_request(exc: ValueError) -> HttpResponse:
    return HttpResponse(f"{exc}\n", status=400, content_type="text/plain; charset=utf-8")


def _machine_figures(m: Machine, params: dict[str, str]):
    """The period the parameters name, the idle threshold, and the machine's figures for both periods."""
    period = resolve_period(params)
    idle_below = _idle_below(params)
    figures = report.machine_report(
        m, period.start, period.end, idle_below, previous_start=period.previous_start, previous_end=period.previous_end
    )
    return period, idle_below, figures


@token_or_session(login_page=True)
def machine(request: HttpRequest, name: str) -> HttpResponse:
    m = visibility.machine_or_404(request.user, name)
    params = request.GET.dict()
    try:
        period, idle_below, figures = _machine_figures(m, params)
    except (ReportError, PeriodError) as exc:
        context = {"m": m, "error": str(exc), "form": _form(params, None, None)}
        return render(request, "reports/machine.html", context, status=400)
    context = {
        "m": m,
        "period": period,
        "title": period.title,
        "r": figures,
        "form": _form(params, period, idle_below),
        "csv_query": _exact_query(period, idle_below),
        "neighbours": _neighbours(params, period),
        "chart": {
            "utilisation": report.utilisation_chart(m, period.start, period.end),
            "devices": [
                {
                    "name": row["now"]["name"],
                    "now": row["now"]["mean_util_percent"],
                    "before": row["before"].get("mean_util_percent"),
                }
                for row in figures["rows"]
            ],
        },
    }
    with timezone.override(period.zone):
        return render(request, "reports/machine.html", context)


@token_or_session(login_page=True)
def machine_csv(request: HttpRequest, name: str) -> HttpResponse:
    m = visibility.machine_or_404(request.user, name)
    try:
        period, _, figures = _machine_figures(m, request.GET.dict())
    except (ReportError, PeriodError) as exc:
        return _bad_request(exc)
    day = period.start.astimezone(period.zone).date().isoformat()
    return csv_response(report.machine_report_csv(figures, period.zone), f"{m.name}-report-{day}.csv")


@token_or_session(login_page=True)
def fleet(request: HttpRequest) -> HttpResponse:
    params = request.GET.dict()
    try:
        period = resolve_period(params)
        idle_below = _idle_below(params)
    except (ReportError, PeriodError) as exc:
        return render(request, "reports/fleet.html", {"error": str(exc), "form": _form(params, None, None)}, status=400)
    figures = report.fleet_report(
        period.start, period.end, idle_below, machine_ids=visibility.visible_machine_ids(request.user)
    )
    context = {
        "period": period,
        "title": period.title,
        "r": figures,
        "form": _form(params, period, idle_below),
        "csv_query": _exact_query(period, idle_below),
        "machine_query": urlencode(
            {k: v for k, v in params.items() if k in ("period", "date", "from", "to", "tz", "idle_below_percent")}
        ),
        "neighbours": _neighbours(params, period),
    }
    with timezone.override(period.zone):
        return render(request, "reports/fleet.html", context)


@token_or_session(login_page=True)
def fleet_csv(request: HttpRequest) -> HttpResponse:
    params = request.GET.dict()
    try:
        period = resolve_period(params)
        idle_below = _idle_below(params)
    except (ReportError, PeriodError) as exc:
        return _bad_request(exc)
    figures = report.fleet_report(
        period.start, period.end, idle_below, machine_ids=visibility.visible_machine_ids(request.user)
    )
    day = period.start.astimezone(period.zone).date().isoformat()
    return csv_response(report.fleet_report_csv(figures), f"fleet-report-{day}.csv")
