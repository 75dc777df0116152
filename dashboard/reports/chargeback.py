"""Chargeback: per team and period, what it was given (allocated GPU-hours), what it used, and
what that cost and earned.

For each job attempt, the part of its span inside the period ``[start, end)`` (dashboard/core/periods.py):

- allocated GPU-hours: span × GPUs held;
- used GPU-hours: over the telemetry windows of those GPUs stamped in the span, Σ activity × window
  length, where activity is SM activity (GPM ``sm_util_percent``) when the GPU reports it and NVML
  utilisation (``util_percent``) otherwise; a window with neither counts nothing and is counted
  in ``unmeasured_windows``;
- energy: Σ GPU power × window length over the same windows (GPU energy only, no host share);
- cost: the machine's cost profile (economics) for the span, the amortisation and fixed costs
  shared by the fraction of the machine's GPUs held, plus the measured energy × PUE × price;
- tokens by kind: the team's jobs' token rows (jobs/throughput.py) stamped in the period; value:
  those tokens at the machine's value rates, or training GPU-hours at the per-GPU-hour rate.

Money is summed only within one currency; a team whose machines use several shows ``mixed``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Sum

from dashboard.core.periods import window_filter
from dashboard.economics import formulas
from dashboard.economics.hardware import physical
from dashboard.economics.roi import effective_profile, effective_rates
from dashboard.fleet.models import GpuSample, Machine
from dashboard.jobs import throughput as job_throughput
from dashboard.jobs.models import Job, JobAttempt
from dashboard.teams.models import Team

CSV_COLUMNS = [
    "team",
    "allocated_gpu_hours",
    "used_gpu_hours",
    "used_percent_of_allocated",
    "sm_weighted_gpu_hours",
    "util_weighted_gpu_hours",
    "unmeasured_windows",
    "energy_kwh",
    "prompt_tokens",
    "generated_tokens",
    "train_tokens",
    "cost",
    "value",
    "currency",
    "jobs",
    "attempts",
]


def _empty(team: Team) -> dict[str, Any]:
    return {
        "team": team.slug,
        "name": team.name,
        "allocated_gpu_hours": 0.0,
        "used_gpu_hours": 0.0,
        "sm_weighted_gpu_hours": 0.0,
        "util_weighted_gpu_hours": 0.0,
        "unmeasured_windows": 0,
        "energy_kwh": 0.0,
        "prompt_tokens": 0,
        "generated_tokens": 0,
        "train_tokens": 0,
        "cost": 0.0,
        "value": 0.0,
        "currencies": set(),
        "jobs": set(),
        "attempts": 0,
    }


def _used(machine_id: int, gpus: list[int], lo: datetime, hi: datetime) -> tuple[float, float, int, float]:
    """(SM-weighted GPU-seconds, utilisation-weighted GPU-seconds, unmeasured windows, joules)."""
    sm = util = joules = 0.0
    unmeasured = 0
    rows = GpuSample.objects.filter(machine_id=machine_id, gpu_index__in=gpus, **window_filter(lo, hi)).values_list(
        "interval_s", "sm_util_percent_mean", "util_percent_mean", "power_watts_mean"
    )
    for interval_s, sm_pct, util_pct, watts in rows:
        if sm_pct is not None:
            sm += sm_pct / 100 * interval_s
        elif util_pct is not None:
            util += util_pct / 100 * interval_s
        else:
            unmeasured += 1
        if watts is not None:
            joules += watts * interval_s
    return sm, util, unmeasured, joules


def team_chargeback(start: datetime, end: datetime, teams: list[Team] | None = None) -> list[dict[str, Any]]:
    """One row per team (by name) for ``[start, end)``; ``teams`` limits it (default: all)."""
    teams = list(teams if teams is not None else Team.objects.order_by("name"))
    rows = {t.pk: _empty(t) for t in teams}
    attempts = (
        JobAttempt.objects.filter(job__team_id__in=list(rows), started_at__isnull=False, started_at__lt=end)
        .exclude(ended_at__lte=start)
        .select_related("job", "machine")
    )
    profiles: dict[int, Any] = {}
    rates: dict[int, Any] = {}
    gpu_counts: dict[int, int] = {}
    for a in attempts:
        row = rows[a.job.team_id]
        lo, hi = max(a.started_at, start), min(a.ended_at or end, end)
        if hi <= lo:
            continue
        seconds = (hi - lo).total_seconds()
        gpus = list(a.gpus or [])
        row["attempts"] += 1
        row["jobs"].add(a.job_id)
        row["allocated_gpu_hours"] += seconds * len(gpus) / 3600
        if a.machine is None or not gpus:
            continue
        sm, util, unmeasured, joules = _used(a.machine_id, gpus, lo, hi)
        row["sm_weighted_gpu_hours"] += sm / 3600
        row["util_weighted_gpu_hours"] += util / 3600
        row["used_gpu_hours"] += (sm + util) / 3600
        row["unmeasured_windows"] += unmeasured
        kwh = formulas.energy_kwh(joules, 1.0)
        row["energy_kwh"] += kwh
        m = a.machine
        if m.pk not in profiles:
            profiles[m.pk] = effective_profile(m)
            gpu_counts[m.pk] = max(1, len(physical(list(m.accelerators.all()))))
        profile = profiles[m.pk]
        if profile is not None:
            share = min(1.0, len(gpus) / gpu_counts[m.pk])
            since = profile.in_service
            cost = share * (
                formulas.amortisation_cost(
                    profile.purchase_price,
                    profile.amortisation_s,
                    (lo - since).total_seconds(),
                    (hi - since).total_seconds(),
                )
                + formulas.fixed_cost(profile.fixed_monthly, seconds)
            )
            if profile.price_per_kwh is not None:
                cost += formulas.energy_cost(kwh, profile.price_per_kwh, profile.pue)
            row["cost"] += cost
            row["currencies"].add(profile.currency)
        if a.job.kind == Job.Kind.TRAIN:
            r = rates.setdefault(m.pk, effective_rates(m))
            if r is not None and r.train_per_million_tokens is None and r.train_per_gpu_hour is not None:
                row["value"] += float(r.train_per_gpu_hour) * seconds * len(gpus) / 3600
                row["currencies"].add(r.currency)
    _tokens(rows, start, end, rates)
    return [_finish(r) for r in sorted(rows.values(), key=lambda r: r["name"].lower())]


def _tokens(rows: dict[int, dict[str, Any]], start: datetime, end: datetime, rates: dict[int, Any]) -> None:
    jobs = dict(Job.objects.filter(team_id__in=list(rows)).values_list("pk", "team_id"))
    sums = (
        job_throughput.rows_of(list(jobs))
        .filter(**window_filter(start, end))
        .values("job_key", "machine_id")
        .annotate(p=Sum("prompt_tokens"), g=Sum("generated_tokens"), t=Sum("train_tokens"))
    )
    machines = {}
    for s in sums:
        row = rows[jobs[s["job_key"]]]
        row["prompt_tokens"] += s["p"] or 0
        row["generated_tokens"] += s["g"] or 0
        row["train_tokens"] += s["t"] or 0
        mid = s["machine_id"]
        if mid not in rates:
            machines.setdefault(mid, Machine.objects.get(pk=mid))
            rates[mid] = effective_rates(machines[mid])
        r = rates[mid]
        if r is None:
            continue
        if r.serve_per_million_generated is not None:
            row["value"] += float(r.serve_per_million_generated) * (s["g"] or 0) / 1e6
        if r.train_per_million_tokens is not None:
            row["value"] += float(r.train_per_million_tokens) * (s["t"] or 0) / 1e6
        row["currencies"].add(r.currency)


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    currencies = row.pop("currencies")
    row["currency"] = currencies.pop() if len(currencies) == 1 else ("mixed" if currencies else None)
    if row["currency"] in (None, "mixed"):
        row["cost"] = row["value"] = None  # never add up different currencies, never invent money
    row["jobs"] = len(row["jobs"])
    alloc = row["allocated_gpu_hours"]
    row["used_percent_of_allocated"] = row["used_gpu_hours"] / alloc * 100 if alloc else None
    return row


def csv_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    def cell(v: Any) -> Any:
        if v is None:
            return ""
        return round(v, 4) if isinstance(v, float) else v

    return [CSV_COLUMNS] + [[cell(r[c]) for c in CSV_COLUMNS] for r in rows]
