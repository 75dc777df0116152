"""Utilisation reports: one machine over a period beside the period before it, and the fleet ranked.

Per-device figures (mean and p95 utilisation, busy and idle hours, power and energy) come from the
finest telemetry still kept for the period (``source_for``):

- ``raw``: the agent's windows; mean weighted by window length, p95 of the window means;
- ``minute``: minute rollups; mean weighted by snapshots, p95 of the minute means;
- ``hour``: hour rollups; mean weighted by snapshots, p95 of the hourly p95s (an approximation).

Busy and idle hours count the time of windows (or minutes, or hours) whose mean utilisation is at
or above, or below, ``idle_below_percent``. Money (cost, idle cost, value, RoI) and the machine's
energy as costed (accelerators plus the profile's host draw) are economics.roi's figures for the
same period; tokens count each window once per job, the source that counted most, as RoI does.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Collection
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from django.conf import settings
from django.db.models import F, Sum
from django.utils import timezone

from dashboard.core.periods import window_filter
from dashboard.core.stats import P95, percentile
from dashboard.economics import formulas as f
from dashboard.economics import roi
from dashboard.economics.efficiency import period_efficiency
from dashboard.fleet import retention, throughput
from dashboard.fleet.models import (
    Accelerator,
    GpuRollup,
    GpuSample,
    Machine,
    SystemRollup,
    SystemSample,
)
from dashboard.fleet.visibility import only
from dashboard.jobs.models import JobAttempt

UTC = UTC
# Raw windows are read into Python; past a week of them, minute means give the same picture faster.
RAW_MAX_SPAN = timedelta(days=7)
CHART_MINUTES_MAX_SPAN = timedelta(days=3)
OUTCOMES = ("succeeded", "failed", "cancelled", "timeout", "preempted", "refused", "lost", "unclaimed", "running")
SOURCES = {
    "raw": "agent windows (p95 of window means)",
    "minute": "minute rollups (p95 of minute means)",
    "hour": "hour rollups (p95 of hourly p95s, an approximation)",
}


class ReportError(ValueError):
    """A parameter a report cannot use; the message is one sentence naming it.

    Period parameters raise ``dashboard.core.periods.PeriodError`` (also a ValueError)."""


# ---------------------------------------------------------------------------------------------
# Figures


def source_for(start: datetime, end: datetime, now: datetime) -> str:
    """The finest telemetry kept from ``start`` on: raw, minute or hour."""
    raw = retention.cutoff(now, settings.RETENTION_RAW_DAYS)
    if (raw is None or start >= raw) and end - start <= RAW_MAX_SPAN:
        return "raw"
    minutes = retention.cutoff(now, settings.RETENTION_MINUTE_DAYS)
    if minutes is None or start >= minutes:
        return "minute"
    return "hour"


def _rows(scope: str, source: str, machine: Machine, start: datetime, end: datetime):
    """(device, seconds, util mean, util for the p95, power mean, power for the p95) per window or bucket."""
    if source == "raw":
        model = GpuSample if scope == "gpu" else SystemSample
        qs = model.objects.filter(machine=machine, **window_filter(start, end))
    else:
        model = GpuRollup if scope == "gpu" else SystemRollup
        qs = model.objects.filter(
            machine=machine, resolution_s=60 if source == "minute" else 3600, **window_filter(start, end, "bucket")
        )
    seconds = "interval_s" if source == "raw" else "count"
    if scope == "gpu":
        util, power = (
            ("util_percent_p95", "power_watts_p95") if source == "hour" else ("util_percent_mean", "power_watts_mean")
        )
        return qs.values_list("gpu_index", seconds, "util_percent_mean", util, "power_watts_mean", power)
    util = "cpu_percent_p95" if source == "hour" else "cpu_percent_mean"
    return ((-1, s, u, p, None, None) for s, u, p in qs.values_list(seconds, "cpu_percent_mean", util))


FIGURES = (
    "mean_util_percent",
    "p95_util_percent",
    "busy_hours",
    "idle_hours",
    "mean_power_watts",
    "p95_power_watts",
    "energy_kwh",
)


def _device_figures(rows, idle_below: float) -> dict[int, dict[str, Any]]:
    """Per device: the FIGURES from rows of (device, seconds, util, util for p95, power, power for p95)."""
    acc: dict[int, dict[str, Any]] = defaultdict(
        lambda: {
            "util_s": 0.0,
            "util_sum": 0.0,
            "busy": 0.0,
            "idle": 0.0,
            "power_s": 0.0,
            "power_j": 0.0,
            "u": [],
            "p": [],
        }
    )
    for device, seconds, util, util_q, power, power_q in rows:
        a = acc[device]
        seconds = float(seconds or 0)
        if util is not None:
            a["util_s"] += seconds
            a["util_sum"] += util * seconds
            a["busy" if util >= idle_below else "idle"] += seconds
        if util_q is not None:
            a["u"].append(util_q)
        if power is not None:
            a["power_s"] += seconds
            a["power_j"] += power * seconds
        if power_q is not None:
            a["p"].append(power_q)
    out = {}
    for device, a in acc.items():
        out[device] = {
            "mean_util_percent": a["util_sum"] / a["util_s"] if a["util_s"] else None,
            "p95_util_percent": percentile(a["u"], P95),
            "busy_hours": a["busy"] / 3600 if a["util_s"] else None,
            "idle_hours": a["idle"] / 3600 if a["util_s"] else None,
            "mean_power_watts": a["power_j"] / a["power_s"] if a["power_s"] else None,
            "p95_power_watts": percentile(a["p"], P95),
            "energy_kwh": a["power_j"] / f.JOULES_PER_KWH if a["power_s"] else None,
        }
    return out


def device_name(acc: Accelerator | None, index: int) -> str:
    if acc is None:
        return f"GPU {index}"
    return f"GPU {index} · {acc.name.replace('NVIDIA ', '')}" + (f" ({acc.mig_profile})" if acc.mig_profile else "")


def _tokens(machine: Machine, start: datetime, end: datetime) -> dict[str, int]:
    """Tokens of the windows stamped in [start, end), by kind (per window and job, the best source)."""
    return throughput.totals(throughput.window_tokens(throughput.machine_rows(machine, start, end)))


def _jobs(machine: Machine, start: datetime, end: datetime) -> dict[str, Any]:
    """Attempts that ran on the machine during [start, end) and how each ended (or 'running')."""
    attempts = list(
        JobAttempt.objects.filter(machine=machine, started_at__isnull=False, started_at__lt=end)
        .exclude(ended_at__lte=start)
        .select_related("job")
        .order_by("started_at")
    )
    outcomes: Counter[str] = Counter()
    rows = []
    for a in attempts:
        outcome = a.outcome or ("running" if a.ended_at is None else "unknown")
        outcomes[outcome] += 1
        rows.append(
            {
                "job": a.job_id,
                "name": a.job.name,
                "kind": a.job.kind,
                "attempt": a.number,
                "gpus": a.gpus,
                "started_at": a.started_at,
                "ended_at": a.ended_at,
                "outcome": outcome,
            }
        )
    return {
        "jobs": len({a.job_id for a in attempts}),
        "attempts": len(attempts),
        "outcomes": {o: outcomes[o] for o in (*OUTCOMES, *sorted(set(outcomes) - set(OUTCOMES))) if outcomes[o]},
        "rows": rows,
    }


def _money(machine: Machine, start: datetime, end: datetime, idle_below: float, now: datetime) -> dict[str, Any]:
    """economics.roi's totals for the period, or a note when the machine was not in service yet."""
    profile = roi.effective_profile(machine)
    in_service = profile.in_service if profile else machine.created_at
    if end <= in_service:
        return {
            "currency": profile.currency if profile else None,
            "problems": ["the machine was not in service yet"],
            **{
                k: None
                for k in (
                    "energy_kwh",
                    "energy_cost",
                    "cost",
                    "idle_cost",
                    "value",
                    "roi_percent",
                    "idle_hours",
                    "monitored_hours",
                    "cost_per_million_tokens",
                )
            },
        }
    r = roi.machine_roi(machine, since=start, until=end, idle_below_percent=idle_below, now=now)
    t = r["totals"]
    return {
        "currency": r["currency"],
        "problems": r["problems"],
        "energy_kwh": t["energy_kwh"] if t["monitored_hours"] else None,
        "energy_incomplete": t["energy_incomplete"],
        "energy_estimated_kwh": t["energy_estimated_kwh"],
        "energy_cost": t["energy_cost"],
        "cost": t["cost"],
        "idle_cost": t["idle_cost"],
        "value": t["value"],
        "roi_percent": t["roi_percent"],
        "idle_hours": t["idle_hours"],
        "monitored_hours": t["monitored_hours"],
        "cost_per_million_tokens": t["cost_per_million_tokens"],
    }


def period_figures(
    machine: Machine,
    start: datetime,
    end: datetime,
    idle_below: float,
    now: datetime,
    accelerators: dict[int, Accelerator],
) -> dict[str, Any]:
    source = source_for(start, end, now)
    gpus = _device_figures(_rows("gpu", source, machine, start, end), idle_below)
    cpu = _device_figures(_rows("cpu", source, machine, start, end), idle_below).get(-1, {})
    devices = []
    for index in sorted(set(accelerators) | set(gpus)):
        figures = gpus.get(index) or dict.fromkeys(FIGURES)
        devices.append({"scope": "gpu", "index": index, "name": device_name(accelerators.get(index), index), **figures})
    devices.append(
        {
            "scope": "cpu",
            "index": None,
            "name": "CPU",
            **(cpu or dict.fromkeys(FIGURES)),
            "energy_kwh": None,
            "mean_power_watts": None,
            "p95_power_watts": None,
        }
    )
    return {
        "start": start,
        "end": end,
        "hours": (end - start).total_seconds() / 3600,
        "source": source,
        "source_label": SOURCES[source],
        "devices": devices,
        "tokens": _tokens(machine, start, end),
        "jobs": _jobs(machine, start, end),
        "money": _money(machine, start, end, idle_below, now),
        "efficiency": period_efficiency([machine], start, end, now),
    }


def machine_report(
    machine: Machine,
    start: datetime,
    end: datetime,
    idle_below_percent: float = roi.DEFAULT_IDLE_BELOW_PERCENT,
    now: datetime | None = None,
    previous_start: datetime | None = None,
    previous_end: datetime | None = None,
) -> dict[str, Any]:
    """Figures for [start, end) and for the previous period: by default the same length just before."""
    now = now or timezone.now()
    if previous_start is None:
        previous_start, previous_end = start - (end - start), start
    accelerators = {a.index: a for a in machine.accelerators.all()}
    current = period_figures(machine, start, end, idle_below_percent, now, accelerators)
    previous = period_figures(machine, previous_start, previous_end or start, idle_below_percent, now, accelerators)
    out = {
        "machine": machine.name,
        "idle_below_percent": idle_below_percent,
        "currency": current["money"]["currency"] or previous["money"]["currency"],
        "current": current,
        "previous": previous,
        "rows": _side_by_side(current, previous),
    }
    out["summary"] = summary_rows(out)
    return out


def _outcome_count(outcome: str, period: dict[str, Any]) -> int:
    return period["jobs"]["outcomes"].get(outcome, 0)


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The machine-wide figures of both periods as table rows: label, kind (how to format), values."""
    now, before = report["current"], report["previous"]
    rows = [
        ("Energy as costed (kWh)", "kwh", lambda p: p["money"]["energy_kwh"]),
        ("Prompt tokens", "int", lambda p: p["tokens"]["prompt"]),
        ("Generated tokens", "int", lambda p: p["tokens"]["generated"]),
        ("Training tokens", "int", lambda p: p["tokens"]["train"]),
        ("Jobs run", "int", lambda p: p["jobs"]["jobs"]),
        ("Attempts", "int", lambda p: p["jobs"]["attempts"]),
        *(
            (f"… {o}", "int", functools.partial(_outcome_count, o))
            for o in OUTCOMES
            if now["jobs"]["outcomes"].get(o) or before["jobs"]["outcomes"].get(o)
        ),
        ("Energy cost", "money", lambda p: p["money"]["energy_cost"]),
        ("Cost", "money", lambda p: p["money"]["cost"]),
        ("Idle cost", "money", lambda p: p["money"]["idle_cost"]),
        ("Value", "money", lambda p: p["money"]["value"]),
        ("RoI (%)", "float", lambda p: p["money"]["roi_percent"]),
        ("Mean MFU of training jobs, by time (%)", "float", lambda p: p["efficiency"]["mfu_percent"]),
        ("Bandwidth efficiency of serving jobs, by time (%)", "float", lambda p: p["efficiency"]["bandwidth_percent"]),
    ]
    out = []
    for label, kind, get in rows:
        a, b = get(now), get(before)
        out.append(
            {
                "label": label,
                "kind": kind,
                "now": a,
                "before": b,
                "change": a - b if a is not None and b is not None else None,
            }
        )
    return out


def _side_by_side(current: dict[str, Any], previous: dict[str, Any]) -> list[dict[str, Any]]:
    """Device rows of both periods paired up, for the page's table.

    A device may have figures in one period only (samples for a GPU the inventory does not list, in
    one of them): the other side is then a row of unknown figures, never a missing one.
    """
    now = {(d["scope"], d["index"]): d for d in current["devices"]}
    before = {(d["scope"], d["index"]): d for d in previous["devices"]}
    rows = []
    for key in sorted(now.keys() | before.keys(), key=lambda k: (k[0] == "cpu", k[1] or 0)):  # GPUs, then the CPU
        known = now.get(key) or before[key]
        empty = {"scope": known["scope"], "index": known["index"], "name": known["name"], **dict.fromkeys(FIGURES)}
        rows.append({"now": now.get(key) or empty, "before": before.get(key) or empty})
    return rows


# ---------------------------------------------------------------------------------------------
# Chart: utilisation over the period


def utilisation_chart(machine: Machine, start: datetime, end: datetime, now: datetime | None = None) -> dict[str, Any]:
    """Mean utilisation per GPU and of the CPU from minute rollups (hours beyond three days or past
    the minutes' retention); times in epoch milliseconds at the middle of each bucket."""
    now = now or timezone.now()
    minutes = retention.cutoff(now, settings.RETENTION_MINUTE_DAYS)
    resolution = 60 if end - start <= CHART_MINUTES_MAX_SPAN and (minutes is None or start >= minutes) else 3600
    series: dict[str, dict[int, float]] = defaultdict(dict)
    accelerators = {a.index: a for a in machine.accelerators.all()}
    gpu_rows = GpuRollup.objects.filter(
        machine=machine, resolution_s=resolution, **window_filter(start, end, "bucket"), util_percent_mean__isnull=False
    ).values_list("gpu_index", "bucket", "util_percent_mean")
    for index, bucket, util in gpu_rows:
        series[device_name(accelerators.get(index), index)][int(bucket.timestamp())] = util
    cpu_rows = SystemRollup.objects.filter(
        machine=machine, resolution_s=resolution, **window_filter(start, end, "bucket"), cpu_percent_mean__isnull=False
    ).values_list("bucket", "cpu_percent_mean")
    for bucket, util in cpu_rows:
        series["CPU"][int(bucket.timestamp())] = util
    times = sorted({t for points in series.values() for t in points})
    names = sorted((n for n in series if n != "CPU"), key=lambda n: int(n.split()[1])) + (
        ["CPU"] if "CPU" in series else []
    )
    return {
        "resolution_s": resolution,
        "t": [(t + resolution // 2) * 1000 for t in times],
        "series": [
            {"name": n, "values": [round(series[n][t], 2) if t in series[n] else None for t in times]} for n in names
        ],
    }


# ---------------------------------------------------------------------------------------------
# Fleet


def fleet_report(
    start: datetime,
    end: datetime,
    idle_below_percent: float = roi.DEFAULT_IDLE_BELOW_PERCENT,
    now: datetime | None = None,
    machine_ids: Collection[int] | None = None,
) -> dict[str, Any]:
    """Every machine's (of ``machine_ids``; None: all) cost, idle cost, value and RoI for [start, end),
    ranked two ways.

    Idle cost ranks highest first, RoI highest first; machines without the figure come last.
    Money is never compared across currencies: rankings group machines by currency first.
    """
    now = now or timezone.now()
    machines = list(only(Machine.objects.prefetch_related("accelerators"), machine_ids, "pk").order_by("name"))
    util = {
        r["machine_id"]: r
        for r in only(
            GpuRollup.objects.filter(
                resolution_s=3600, **window_filter(start, end, "bucket"), util_percent_mean__isnull=False
            ),
            machine_ids,
        )
        .values("machine_id")
        .annotate(s=Sum("count"), u=Sum(_weighted("util_percent_mean")))
        .order_by()
    }
    rows = []
    for m in machines:
        money = _money(m, start, end, idle_below_percent, now)
        u = util.get(m.pk)
        rows.append(
            {
                "machine": m.name,
                "gpus": sum(1 for a in m.accelerators.all() if not a.parent_uuid),
                "mean_gpu_util_percent": u["u"] / u["s"] if u and u["s"] else None,
                **money,
            }
        )

    def rank(key: str):
        known = sorted(
            (r for r in rows if r[key] is not None), key=lambda r: (r["currency"] or "", -r[key], r["machine"])
        )
        return known + [r for r in rows if r[key] is None]

    currencies = sorted({r["currency"] for r in rows if r["currency"] and r["cost"] is not None})
    return {
        "start": start,
        "end": end,
        "idle_below_percent": idle_below_percent,
        "machines": rows,
        "by_idle_cost": rank("idle_cost"),
        "by_roi": rank("roi_percent"),
        "currencies": currencies,
    }


def _weighted(column: str):
    return F(column) * F("count")


# ---------------------------------------------------------------------------------------------
# CSV


def money_suffix(currency: str | None) -> str:
    return (currency or "unknown").lower()


def machine_csv_columns(currency: str | None) -> list[str]:
    cur = money_suffix(currency)
    return [
        "period",
        "from",
        "to",
        "period_hours",
        "scope",
        "device",
        "name",
        "source",
        "mean_util_percent",
        "p95_util_percent",
        "busy_hours",
        "idle_hours",
        "mean_power_watts",
        "p95_power_watts",
        "energy_kwh",
        "prompt_tokens",
        "generated_tokens",
        "train_tokens",
        "jobs",
        "attempts",
        *(f"attempts_{o}" for o in OUTCOMES),
        f"energy_cost_{cur}",
        f"cost_{cur}",
        f"idle_cost_{cur}",
        f"value_{cur}",
        "roi_percent",
        "mfu_percent",
        "bandwidth_efficiency_percent",
    ]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return round(value, 4)
    return value


def machine_report_csv(report: dict[str, Any], zone: tzinfo = UTC) -> list[list[Any]]:
    """The header and one row per GPU, one for the CPU and one for the machine, for each period."""
    columns = machine_csv_columns(report["currency"])
    cur = money_suffix(report["currency"])
    out: list[list[Any]] = [columns]
    for label in ("current", "previous"):
        p = report[label]
        base = {
            "period": label,
            "from": p["start"].astimezone(zone).isoformat(),
            "to": p["end"].astimezone(zone).isoformat(),
            "period_hours": p["hours"],
            "source": p["source"],
        }
        for d in p["devices"]:
            row = {**base, **d, "device": d["index"] if d["scope"] == "gpu" else ""}
            out.append([_cell(row.get(c)) for c in columns])
        money, jobs = p["money"], p["jobs"]
        monitored, idle = money.get("monitored_hours"), money.get("idle_hours")
        row = {
            **base,
            "scope": "machine",
            "name": report["machine"],
            "busy_hours": monitored - idle if monitored and idle is not None else None,
            "idle_hours": idle if monitored else None,
            "energy_kwh": money["energy_kwh"],
            "prompt_tokens": p["tokens"]["prompt"],
            "generated_tokens": p["tokens"]["generated"],
            "train_tokens": p["tokens"]["train"],
            "jobs": jobs["jobs"],
            "attempts": jobs["attempts"],
            **{f"attempts_{o}": jobs["outcomes"].get(o, 0) for o in OUTCOMES},
            f"energy_cost_{cur}": money["energy_cost"],
            f"cost_{cur}": money["cost"],
            f"idle_cost_{cur}": money["idle_cost"],
            f"value_{cur}": money["value"],
            "roi_percent": money["roi_percent"],
            "mfu_percent": p["efficiency"]["mfu_percent"],
            "bandwidth_efficiency_percent": p["efficiency"]["bandwidth_percent"],
        }
        out.append([_cell(row.get(c)) for c in columns])
    return out


def fleet_report_csv(report: dict[str, Any]) -> list[list[Any]]:
    """One row per machine with both ranks; money headers carry the currency when there is one."""
    single = report["currencies"][0] if len(report["currencies"]) == 1 else None
    cur = money_suffix(single) if single else "in_currency"
    columns = [
        "machine",
        "rank_idle_cost",
        "rank_roi",
        "gpus",
        "mean_gpu_util_percent",
        "monitored_hours",
        "idle_hours",
        "energy_kwh",
        "currency",
        f"cost_{cur}",
        f"idle_cost_{cur}",
        f"value_{cur}",
        "roi_percent",
    ]
    idle_rank = {r["machine"]: i + 1 for i, r in enumerate(report["by_idle_cost"]) if r["idle_cost"] is not None}
    roi_rank = {r["machine"]: i + 1 for i, r in enumerate(report["by_roi"]) if r["roi_percent"] is not None}
    out: list[list[Any]] = [columns]
    for r in report["by_idle_cost"]:
        row = {
            **r,
            "rank_idle_cost": idle_rank.get(r["machine"]),
            "rank_roi": roi_rank.get(r["machine"]),
            f"cost_{cur}": r["cost"],
            f"idle_cost_{cur}": r["idle_cost"],
            f"value_{cur}": r["value"],
        }
        out.append([_cell(row.get(c)) for c in columns])
    return out
