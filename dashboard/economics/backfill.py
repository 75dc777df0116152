"""Train in the gaps: the hours serving leaves the fleet's GPUs idle, what preemptible training would
do with them, and how the backfill switch (jobs.service.set_backfill) is shown.

An hour of one GPU is idle when its mean utilisation (the hour rollup) is below the idle
threshold, the same rule as the RoI page's idle hours. The hour-of-week profile averages the weeks
observed, so the idle GPU-hours per week are: over the 168 hours of the week, the fraction of a
machine's GPU-hour observations in that hour that were idle × its GPUs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from dashboard.core.periods import window_filter
from dashboard.fleet.models import GpuRollup, Machine
from dashboard.fleet.visibility import only
from dashboard.jobs.models import BackfillPolicy

from . import formulas as f
from .hardware import all_specs, job_rates, physical, spec_for, windows
from .roi import DEFAULT_IDLE_BELOW_PERCENT, effective_profile, effective_rates, machine_roi

DEFAULT_SPAN = timedelta(days=28)
HOURS_PER_WEEK = 168
# A preempted job loses the work since its last checkpoint and the time to restart; a tenth of
# the backfilled hours is a stated allowance, not a measurement.
PREEMPTION_LOSS_FRACTION = 0.1
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def hour_of_week(t: datetime) -> int:
    """0 = Monday 00:00-01:00 UTC ... 167 = Sunday 23:00-24:00 UTC."""
    return t.weekday() * 24 + t.hour


def idle_gpu_hours_per_week(slots: dict[int, list[float]], gpus: int, idle_below_percent: float) -> float:
    """From utilisation observations (%) per hour of the week: Σ over the hours observed of the
    fraction of observations below the threshold × the machine's GPUs."""
    total = 0.0
    for values in slots.values():
        if values:
            total += sum(1 for u in values if u < idle_below_percent) / len(values) * gpus
    return total


def backfill_tokens_per_week(idle_gpu_hours: float, train_tokens_per_s_per_gpu: float) -> float:
    """Training tokens a week that idle GPU-hours give as preemptible backfill, less the preemption loss."""
    return idle_gpu_hours * 3600 * train_tokens_per_s_per_gpu * (1 - PREEMPTION_LOSS_FRACTION)


def backfill_energy_kwh(idle_gpu_hours: float, rated_watts_per_gpu: float) -> float:
    """Extra energy of running idle GPU-hours flat out: the step from the idle floor to rated power."""
    extra_watts = f.estimated_power_watts(100, rated_watts_per_gpu) - f.estimated_power_watts(0, rated_watts_per_gpu)
    return f.energy_kwh(extra_watts, idle_gpu_hours * 3600)


def _train_rate_per_gpu(machine: Machine, gpus: int, planned_per_machine: float | None) -> tuple[float | None, str]:
    """Training tokens/s of one GPU: measured from the machine's training jobs, else the plan's estimate."""
    jobs = list(machine.jobs.filter(kind="train").order_by("-created_at")[:50])
    rates = [r["train_per_s"] for r in job_rates(jobs).values() if r["train_per_s"]]
    if rates:
        return sum(rates) / len(rates) / gpus, f"measured: mean of {len(rates)} training job(s) on {machine.name}"
    if planned_per_machine:
        return planned_per_machine / gpus, "estimated for the plan's training model"
    return None, "no training measured here and no training model in the plan"


def gaps(
    since: datetime | None = None,
    until: datetime | None = None,
    idle_below_percent: float = DEFAULT_IDLE_BELOW_PERCENT,
    planned_train_rates: dict[str, float] | None = None,
    machine_ids: Collection[int] | None = None,
) -> dict[str, Any]:
    """Per machine (of ``machine_ids``; None: all): idle GPU-hours a week, backfill training tokens a
    week, and the RoI with and without them; plus their hour-of-week profile of utilisation and
    serving tokens.

    ``planned_train_rates`` maps a machine name to the plan's estimated training tokens/s of the
    whole machine, used where the machine never trained."""
    until = until or timezone.now()
    since = since or until - DEFAULT_SPAN
    weeks = (until - since).total_seconds() / (7 * 86400)
    specs = all_specs()
    profile_util: dict[int, list[float]] = defaultdict(list)
    profile_tokens: dict[int, float] = defaultdict(float)
    machines = []
    for m in only(Machine.objects.prefetch_related("accelerators"), machine_ids, "pk").order_by("name"):
        accs = physical(list(m.accelerators.all()))
        if not accs:
            continue
        slots: dict[int, list[float]] = defaultdict(list)
        rows = GpuRollup.objects.filter(
            machine=m, resolution_s=3600, gpu_index__in=[a.index for a in accs], **window_filter(since, until, "bucket")
        ).values_list("bucket", "util_percent_mean")
        for bucket, util in rows:
            if util is not None:
                slots[hour_of_week(bucket)].append(util)
                profile_util[hour_of_week(bucket)].append(util)
        for w in windows(m, since, until).values():
            profile_tokens[hour_of_week(w.ts)] += w.generated / weeks if weeks else 0.0
        idle = idle_gpu_hours_per_week(slots, len(accs), idle_below_percent)
        per_gpu, rate_source = _train_rate_per_gpu(m, len(accs), (planned_train_rates or {}).get(m.name))
        tokens_week = backfill_tokens_per_week(idle, per_gpu) if per_gpu else None
        rated = [a.power_limit_watts or getattr(spec_for(a.name, specs), "tdp_watts", None) for a in accs]
        row: dict[str, Any] = {
            "machine": m.name,
            "gpus": len(accs),
            "observed_hours_of_week": len(slots),
            "idle_gpu_hours_per_week": idle,
            "train_tokens_per_s_per_gpu": per_gpu,
            "train_rate_source": rate_source,
            "backfill_tokens_per_week": tokens_week,
            **_uplift(m, since, until, idle_below_percent, weeks, idle, tokens_week, rated),
        }
        machines.append(row)
    profile = [
        {
            "hour_of_week": h,
            "label": f"{WEEKDAYS[h // 24]} {h % 24:02d}:00",
            "util_percent": sum(profile_util[h]) / len(profile_util[h]) if profile_util[h] else None,
            "generated_tokens": profile_tokens.get(h, 0.0),
        }
        for h in range(HOURS_PER_WEEK)
    ]
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "weeks": weeks,
        "idle_below_percent": idle_below_percent,
        "preemption_loss_fraction": PREEMPTION_LOSS_FRACTION,
        "machines": machines,
        "profile": profile,
        "idle_gpu_hours_per_week": sum(r["idle_gpu_hours_per_week"] for r in machines),
        "backfill_tokens_per_week": sum(r["backfill_tokens_per_week"] or 0 for r in machines),
        "policy": policy_dict(BackfillPolicy.current()),
    }


def _uplift(
    m: Machine,
    since: datetime,
    until: datetime,
    idle_below: float,
    weeks: float,
    idle_gpu_hours_week: float,
    tokens_week: float | None,
    rated: list[float | None],
) -> dict[str, Any]:
    """The machine's RoI over the span as measured, and with the backfill's value and energy added."""
    out: dict[str, Any] = {"roi_percent": None, "roi_with_backfill_percent": None, "roi_uplift_points": None}
    report = machine_roi(m, since=since, until=until, idle_below_percent=idle_below)
    out["roi_percent"] = report["totals"]["roi_percent"]
    profile, rates = effective_profile(m), effective_rates(m)
    cost, value = report["totals"]["cost"], report["totals"]["value"]
    if profile is None or rates is None or cost is None or value is None or tokens_week is None:
        return out
    idle_hours_span = idle_gpu_hours_week * weeks
    if rates.train_per_million_tokens is not None:
        extra_value = tokens_week * weeks / 1e6 * float(rates.train_per_million_tokens)
    elif rates.train_per_gpu_hour is not None:
        extra_value = idle_hours_span * (1 - PREEMPTION_LOSS_FRACTION) * float(rates.train_per_gpu_hour)
    else:
        return out
    known = [w for w in rated if w]
    per_gpu_watts = sum(known) / len(known) if known else 0.0
    extra_cost = f.energy_cost(
        backfill_energy_kwh(idle_hours_span, per_gpu_watts), profile.price_per_kwh or 0.0, profile.pue
    )
    out["backfill_value"] = extra_value
    out["backfill_energy_cost"] = extra_cost
    out["roi_with_backfill_percent"] = f.roi_percent(value + extra_value, cost + extra_cost)
    if out["roi_percent"] is not None and out["roi_with_backfill_percent"] is not None:
        out["roi_uplift_points"] = out["roi_with_backfill_percent"] - out["roi_percent"]
    return out


def policy_dict(p: BackfillPolicy) -> dict[str, Any]:
    return {
        "enabled": p.enabled,
        "changed_at": p.changed_at.isoformat() if p.changed_at else None,
        "changed_by": p.changed_by.get_username() if p.changed_by else None,
        # What the switch does, said wherever it is shown (dashboard/jobs/placement.py acts on it).
        "scheduling": (
            "on: preemptible training jobs take the GPUs that machines dedicated to serving leave free, "
            "and serving takes them back by preempting them; turning it off requeues them"
            if p.enabled
            else "off: training stays off machines dedicated to serving"
        ),
    }
