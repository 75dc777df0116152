"""The RoI pages and the machine page's panel. The figures come from the same functions as the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import prefetch_related_objects
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from dashboard.core.periods import PeriodError, parse_moment
from dashboard.fleet import visibility
from dashboard.fleet.models import Machine

from . import assemblies, capacity, roi, share


def _params(request: HttpRequest) -> dict[str, Any]:
    """Query parameters with their defaults; a bad value falls back to the default and says so."""
    out: dict[str, Any] = {"errors": []}

    def number(name: str, default, kind, lo, hi):
        raw = request.GET.get(name, "")
        try:
            value = kind(raw) if raw else default
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            out["errors"].append(f"{name}: expected a number from {lo} to {hi}; using {default}")
            value = default
        return value

    out["idle_below_percent"] = number("idle_below_percent", roi.DEFAULT_IDLE_BELOW_PERCENT, float, 0, 100)
    out["context_tokens"] = number("context_tokens", capacity.DEFAULT_CONTEXT_TOKENS, int, 1, 1_048_576)
    out["batch"] = number("batch", capacity.DEFAULT_BATCH, int, 1, 4096)
    out["since_text"] = request.GET.get("since", "")
    out["since"] = None
    if out["since_text"]:
        try:
            out["since"] = parse_moment(out["since_text"], timezone.now(), "since")
        except PeriodError as exc:
            out["errors"].append(str(exc))
    return out


def _roi_config(name: str, params: dict[str, Any]) -> dict[str, Any]:
    query = f"?idle_below_percent={params['idle_below_percent']}"
    if params.get("since") is not None:
        query += f"&since={params['since'].isoformat()}"
    return {"url": reverse("api:machine_roi", kwargs={"name": name}) + query}


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    params = _params(request)
    since: datetime | None = params["since"]
    # The user's teams' machines and the shared pool: another team's are neither listed nor compared.
    visible = visibility.visible_machine_ids(request.user)
    machines = list(visibility.only(Machine.objects.prefetch_related("accelerators"), visible, "pk").order_by("name"))
    rows = [roi.machine_roi(m, since=since, idle_below_percent=params["idle_below_percent"]) for m in machines]
    context = {
        "params": params,
        "rows": rows,
        "comparison": assemblies.comparison(
            since=since, idle_below_percent=params["idle_below_percent"], machine_ids=visible
        ),
        "columns": [c for c, _ in assemblies.COLUMNS],
    }
    return render(request, "economics/overview.html", context)


@login_required
def machine(request: HttpRequest, name: str) -> HttpResponse:
    m = visibility.machine_or_404(request.user, name)
    params = _params(request)
    context = {"machine": m, "params": params, **_panel(m, params)}
    return render(request, "economics/machine.html", context)


def _panel(m: Machine, params: dict[str, Any], cached: bool = False) -> dict[str, Any]:
    report = roi.machine_roi(m, since=params["since"], idle_below_percent=params["idle_below_percent"], cached=cached)
    return {
        "roi": report,
        "capacity": capacity.machine_capacity(m, params["context_tokens"], params["batch"]),
        "share": share.share_or_split(m),
        "roi_config": _roi_config(m.name, params),
        "economics_url": reverse("economics:machine", kwargs={"name": m.name}),
    }


def machine_panel(machine: Machine) -> dict[str, Any]:
    """What templates/economics/_machine_panel.html needs on the machine page, with default parameters."""
    params = {
        "since": None,
        "idle_below_percent": roi.DEFAULT_IDLE_BELOW_PERCENT,
        "context_tokens": capacity.DEFAULT_CONTEXT_TOKENS,
        "batch": capacity.DEFAULT_BATCH,
        "errors": [],
    }
    prefetch_related_objects([machine], "accelerators")  # read once: profile, rated power, assembly, capacity
    panel = _panel(machine, params, cached=True)
    return {**panel, "params": params, "unset": _unset(panel)}


def _unset(panel: dict[str, Any]) -> dict[str, str]:
    """Per panel, the one line it shows while nothing is set or measured for it (empty: show it whole)."""
    report = panel["roi"]
    missing = [
        w for w, gone in (("a cost profile", not report["profile"]), ("value rates", not report["rates"])) if gone
    ]
    return {
        "roi": ("to do: set " + " and ".join(missing)) if missing else "",
        "share": "" if panel["share"]["runs"] else "no training and serving jobs measured here yet",
        "capacity": "" if panel["capacity"]["memory_bytes"] else "no accelerator memory known: nothing to size",
    }
