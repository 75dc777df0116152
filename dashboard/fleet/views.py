"""HTML pages: the fleet overview and one machine. The data comes from ``queries``, like the API's."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.dateparse import parse_datetime

from dashboard.jobs.pages import machine_jobs

from . import queries
from .models import Machine


def _gpus(m: dict[str, Any]) -> list[dict[str, Any]]:
    """Inventory joined with the latest sample, one row per device (a device may lack either)."""
    latest = {g["index"]: g for g in ((m["latest"] or {}).get("gpus") or [])}
    rows = []
    for acc in m["accelerators"]:
        sample = latest.pop(acc["index"], {})
        rows.append({**acc, "processes": [], **{k: v for k, v in sample.items() if v is not None}})
    for index, sample in sorted(latest.items()):
        rows.append({"name": f"GPU {index}", "mem_total_bytes": None, "power_limit_watts": None, **sample})
    return rows


def _present(m: dict[str, Any]) -> dict[str, Any]:
    latest = m["latest"] or {}
    system = latest.get("system") or {}
    gpus = _gpus(m)
    return {
        **m,
        "last_seen_at": parse_datetime(m["last_seen"]) if m["last_seen"] else None,
        "system": system,
        "mem_total": system.get("mem_total_bytes") or m["mem_total_bytes"],
        "gpus": gpus,
        "processes": [{"gpu": g["index"], **p} for g in gpus for p in g.get("processes") or []],
        "sparkline_json": json.dumps(
            {"cpu": m["sparkline"]["cpu_percent"], "gpu": m["sparkline"]["gpu_util_percent"] if m["accelerators"] else []}
        ),
    }


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    context = {
        "machines": [_present(m) for m in queries.fleet_overview()],
        "server_url": request.build_absolute_uri("/").rstrip("/"),
    }
    partial = request.GET.get("partial")
    return render(request, "fleet/_machines.html" if partial else "fleet/overview.html", context)


@login_required
def machine(request: HttpRequest, name: str) -> HttpResponse:
    m = _present(queries.machine_detail(get_object_or_404(Machine, name=name)))
    context = {
        "m": m,
        "server_url": request.build_absolute_uri("/").rstrip("/"),
        "jobs": machine_jobs(name),
        "charts": {
            "seriesUrl": reverse("api:machine_series", kwargs={"name": name}),
            "liveUrl": f"{request.path}?partial=1",
            "gpus": [g["index"] for g in m["gpus"]],
            "memTotalBytes": m["mem_total"],
        },
    }
    partial = request.GET.get("partial")
    return render(request, "fleet/_machine_live.html" if partial else "fleet/machine.html", context)
