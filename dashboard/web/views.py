"""HTML pages: the fleet overview and one machine. The data comes from ``queries``, like the API's."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from dashboard.accounts.auth import token_or_session
from dashboard.core.csvfile import csv_response
from dashboard.core.periods import PeriodError, required_range, window_filter
from dashboard.economics.views import machine_panel
from dashboard.fleet import queries, throughput, visibility
from dashboard.fleet.models import Machine, ThroughputSample
from dashboard.fleet.series import SeriesError
from dashboard.jobs import throughput as job_throughput
from dashboard.jobs.pages import machine_jobs

from . import export
from .overview import SORTS, STATES, Filters, fleet_page

# The range picker's presets (static/js/charts.js lists the same keys); any other range is custom.
RANGE_PRESETS = (("15m", "15 min"), ("1h", "1 h"), ("6h", "6 h"), ("24h", "24 h"), ("7d", "7 d"), ("30d", "30 d"))


def page_range(params: Any, now: datetime) -> dict[str, Any]:
    """The range a page's query asks for: ``range`` (a preset) or ``from``/``to``; 1 h when unusable."""
    presets = dict(RANGE_PRESETS)
    if params.get("from"):
        try:
            start, end = required_range(params["from"], params.get("to") or None, now)
        except PeriodError:
            pass
        else:
            return {"preset": None, "custom": True, "start": start, "end": end}
    preset = params.get("range") if params.get("range") in presets else "1h"
    start, end = required_range(preset, None, now)
    return {"preset": preset, "custom": False, "start": start, "end": end}


def _present(m: dict[str, Any]) -> dict[str, Any]:
    latest = m["latest"] or {}
    system = latest.get("system") or {}
    gpus = [{"processes": [], **d} for d in queries.devices(m["accelerators"], m["latest"])]
    refused_at = parse_datetime(m["last_refusal_at"]) if m["last_refusal_at"] else None
    return {
        **m,
        "last_seen_at": parse_datetime(m["last_seen"]) if m["last_seen"] else None,
        "last_refusal_at": refused_at,
        # A refusal without lost samples (an inventory the agent then sent without) is news for a day.
        "refusal_recent": refused_at is not None and timezone.now() - refused_at < timedelta(days=1),
        "system": system,
        "mem_total": system.get("mem_total_bytes") or m["mem_total_bytes"],
        "gpus": gpus,
        "processes": [{"gpu": g["index"], **p} for g in gpus for p in g.get("processes") or []],
        # Formatted here, not with floatformat in the template: two filters per core were a third
        # of the page's time on a 128-thread host (and data-height is read by JS: always a '.').
        "cores": [{"title": f"{c:.0f}", "height": f"{c:.1f}"} for c in system.get("cpu_per_core_percent") or []],
    }


def _fleet_tokens(since: datetime, until: datetime, machine_ids: Collection[int] | None = None) -> dict[str, bool]:
    """Whether the fleet (``machine_ids``; None: every machine) counted tokens of each charted kind
    in the range: which throughput charts have data. An index probe each (fleet migration 0013),
    where summing them read every row."""
    rows = visibility.only(ThroughputSample.objects.filter(**window_filter(since, until)), machine_ids)
    return {kind: rows.filter(**{f"{kind}_tokens__gt": 0}).exists() for kind in ("train", "generated")}


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    visible = visibility.visible_machine_ids(request.user)
    context = {
        **fleet_page(Filters.from_query(request.GET), now, visible),
        "states": STATES,
        "sorts": SORTS,
        "server_url": request.build_absolute_uri("/").rstrip("/"),
    }
    if context["fleet_size"]:
        shown = page_range(request.GET, now)
        context.update(range=shown, range_presets=RANGE_PRESETS)
        context["fleet_tokens"] = _fleet_tokens(shown["start"], shown["end"], visible)
    partial = request.GET.get("partial")
    return render(request, "fleet/_machines.html" if partial else "fleet/overview.html", context)


@login_required
def machine(request: HttpRequest, name: str) -> HttpResponse:
    """The machine page's shell: state, inventory, the charts' containers, cores and processes. Its
    heavy panels (throughput, jobs, RoI and capacity) each load from their own URL once it is shown
    (static/js/panels.js), so the shell runs none of their queries."""
    # Its accelerators once, for the state, the inventory and the GPM panel's devices.
    machine_obj = visibility.machine_or_404(request.user, name, Machine.objects.prefetch_related("accelerators"))
    # machine_dict, not machine_detail: the page and its live refresh draw no sparkline (its query
    # was most of the shell's SQL).
    m = _present(queries.machine_dict(machine_obj, timezone.now()))
    context: dict[str, Any] = {"m": m, "machine": machine_obj}
    partial = request.GET.get("partial")
    if partial:  # the 10 s live refresh (_machine_live.html): state, processes and cores only
        return render(request, "fleet/_machine_live.html", context)
    context.update(
        server_url=request.build_absolute_uri("/").rstrip("/"),
        charts={
            "machine": name,
            "seriesUrl": reverse("api:machine_series", kwargs={"name": name}),
            "jobsUrl": reverse("api:jobs"),
            "liveUrl": f"{request.path}?partial=1",
            "gpus": [g["index"] for g in m["gpus"]],
            "memTotalBytes": m["mem_total"],
        },
    )
    context.update(range=page_range(request.GET, timezone.now()), range_presets=RANGE_PRESETS)
    return render(request, "fleet/machine.html", context)


@token_or_session(login_page=True)
def machine_series_csv(request: HttpRequest, name: str) -> HttpResponse:
    """The machine page's data for its range (the page's own ``range`` or ``from``/``to``) as CSV:
    every metric, or those of ``metrics=a,b`` (web/export.py); a session or a personal token."""
    machine_obj = visibility.machine_or_404(request.user, name)
    span = page_range(request.GET, timezone.now())
    try:
        metrics = export.parse_metrics(request.GET.get("metrics", ""), machine_obj)
    except SeriesError as exc:
        return HttpResponse(f"{exc}\n", status=400, content_type="text/plain; charset=utf-8")
    rows = export.machine_rows(machine_obj, metrics, span["start"], span["end"], job_throughput.names_on(machine_obj))
    return csv_response(rows, f"{machine_obj.name}-{timezone.localtime(span['start']):%Y-%m-%d-%H%M}.csv")


@login_required
def machine_throughput_panel(request: HttpRequest, name: str) -> HttpResponse:
    """The machine page's throughput card for the page's range (its query string: ``range`` or
    ``from``/``to``); throughput.js draws its charts and keeps it current from the API."""
    machine_obj = visibility.machine_or_404(request.user, name)
    shown = page_range(request.GET, timezone.now())
    context = {"m": machine_obj, "throughput": throughput.machine_summary(machine_obj, shown["start"], shown["end"])}
    return render(request, "fleet/_throughput.html", context)


@login_required
def machine_jobs_panel(request: HttpRequest, name: str) -> HttpResponse:
    """The machine page's jobs: those running there now and the last ones it ran."""
    machine_obj = visibility.machine_or_404(request.user, name)
    return render(request, "jobs/_machine_jobs.html", {"m": machine_obj, "jobs": machine_jobs(machine_obj.name)})


@login_required
def machine_economics_panel(request: HttpRequest, name: str) -> HttpResponse:
    """The machine page's RoI, share-or-split and capacity panel (default parameters)."""
    machine_obj = visibility.machine_or_404(request.user, name)
    return render(request, "economics/_machine_panel.html", {"m": machine_obj, "economics": machine_panel(machine_obj)})
