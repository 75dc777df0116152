"""What a machine cost and earned, per day and cumulative since it went into service.

Energy comes from the hour rollups of accelerator power (estimated from utilisation and rated
power where a device has no power sensor); value from the tokens in ``ThroughputSample`` and the
GPU-hours of training attempts. Days are calendar days in the server's TIME_ZONE.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone

from dashboard.core.periods import day_edges, window_filter
from dashboard.fleet import throughput
from dashboard.fleet.models import GpuRollup, Machine, ThroughputSample
from dashboard.jobs.models import Job, JobAttempt

from . import formulas as f
from .efficiency import period_efficiency
from .hardware import all_specs, assembly_key, physical, spec_for
from .models import CostProfile, HardwareSpec, ValueRates

UTC = UTC
DEFAULT_IDLE_BELOW_PERCENT = 10.0
DEFAULT_AMORTISATION_MONTHS = 36  # for a profile derived from catalogue prices
RECENT = timedelta(days=7)  # the payback projection uses the net rate of the last week's days with data


@dataclass
class Profile:
    """The cost profile in force for a machine, whichever row (or the catalogue) it came from."""

    source: str  # "machine", "assembly" or "catalogue"
    name: str
    currency: str
    purchase_price: float
    amortisation_months: int
    in_service: datetime
    price_per_kwh: float | None  # None: unknown (a catalogue-derived profile)
    pue: float
    host_power_watts: float
    fixed_monthly: float

    @property
    def amortisation_s(self) -> float:
        return self.amortisation_months * f.SECONDS_PER_MONTH

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "name": self.name,
            "currency": self.currency,
            "purchase_price": self.purchase_price,
            "amortisation_months": self.amortisation_months,
            "in_service": self.in_service.isoformat(),
            "electricity_price_per_kwh": self.price_per_kwh,
            "pue": self.pue,
            "host_power_watts": self.host_power_watts,
            "fixed_monthly": self.fixed_monthly,
        }


def _start_of_day(d, zone) -> datetime:
    return datetime.combine(d, time.min, tzinfo=zone)


def cost_profile_rows() -> dict[tuple[str, Any], CostProfile]:
    """Every cost profile, keyed ``("machine", id)`` or ``("assembly", key)``: read once for a fleet
    (the first by name wins for an assembly, as ``effective_profile`` reads them one by one)."""
    rows: dict[tuple[str, Any], CostProfile] = {}
    for row in CostProfile.objects.order_by("name", "pk"):
        rows.setdefault(("machine", row.machine_id) if row.machine_id else ("assembly", row.assembly), row)
    return rows


def effective_profile(
    machine: Machine,
    rows: dict[tuple[str, Any], CostProfile] | None = None,
    specs: list[HardwareSpec] | None = None,
) -> Profile | None:
    """The machine's own profile, else its assembly's, else one from catalogue prices, else None.

    ``rows`` (``cost_profile_rows()``) and ``specs`` (``all_specs()``), read once, serve many machines."""
    zone = timezone.get_current_timezone()
    accelerators = list(machine.accelerators.all())
    if rows is None:
        row = (
            CostProfile.objects.filter(machine=machine).first()
            or CostProfile.objects.filter(machine=None, assembly=assembly_key(machine, accelerators)).first()
        )
    else:
        row = rows.get(("machine", machine.pk)) or rows.get(("assembly", assembly_key(machine, accelerators)))
    if row is not None:
        start = _start_of_day(row.in_service_on, zone) if row.in_service_on else machine.created_at
        return Profile(
            "machine" if row.machine_id else "assembly",
            row.name,
            row.currency,
            float(row.purchase_price),
            row.amortisation_months,
            start,
            float(row.electricity_price_per_kwh),
            row.pue,
            row.host_power_watts,
            float(row.fixed_monthly),
        )
    devices = physical(accelerators)
    specs = all_specs() if specs is None else specs
    prices = [getattr(spec_for(a.name, specs), "launch_price_usd", None) for a in devices]
    if not devices or any(p is None for p in prices):
        return None  # never invent money
    return Profile(
        "catalogue",
        "catalogue launch prices",
        "USD",
        float(sum(prices)),
        DEFAULT_AMORTISATION_MONTHS,
        machine.created_at,
        None,
        1.0,
        0.0,
        0.0,
    )


def value_rate_rows() -> dict[int | None, ValueRates]:
    """Every value-rates row keyed by machine id (None: the global row), read once for a fleet."""
    return {row.machine_id: row for row in ValueRates.objects.order_by("-pk")}  # the lowest pk wins, as first()


def effective_rates(machine: Machine, rows: dict[int | None, ValueRates] | None = None) -> ValueRates | None:
    if rows is not None:
        return rows.get(machine.pk) or rows.get(None)
    return ValueRates.objects.filter(machine=machine).first() or ValueRates.objects.filter(machine=None).first()


def _num(value) -> float | None:
    return None if value is None else float(value)


def _floor_hour(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def rated_watts(machine: Machine, specs: list[HardwareSpec] | None = None) -> dict[int, float | None]:
    """Per physical accelerator index: its power limit, else its catalogue TDP, in W (None: unknown)."""
    specs = all_specs() if specs is None else specs
    rated: dict[int, float | None] = {}
    for a in physical(list(machine.accelerators.all())):
        spec = spec_for(a.name, specs)
        rated[a.index] = a.power_limit_watts or (spec.tdp_watts if spec else None)
    return rated


HOUR_FIELDS = ("bucket", "gpu_index", "count", "power_watts_mean", "util_percent_mean")


def hour_rows(machine_ids: list[int], lo: datetime, hi: datetime) -> QuerySet[GpuRollup, tuple]:
    """The hour rollups of ``machine_ids`` in ``[lo, hi)``, in a fixed order (a float sum does not
    depend on the database's row order): ``(machine_id, *HOUR_FIELDS)``."""
    return (
        GpuRollup.objects.filter(machine_id__in=machine_ids, resolution_s=3600, **window_filter(lo, hi, "bucket"))
        .order_by("machine_id", "bucket", "gpu_index")
        .values_list("machine_id", *HOUR_FIELDS)
    )


def hours_of(
    rows: Iterable[tuple], rated: dict[int, float | None], idle_below: float
) -> dict[datetime, dict[str, Any]]:
    """Per UTC hour of ``rows`` (``HOUR_FIELDS``; devices not in ``rated`` are skipped): accelerator
    energy (kWh), whether any of it is estimated, mean utilisation, seconds covered."""
    hours: dict[datetime, dict[str, Any]] = {}
    for bucket, index, count, power, util in rows:
        if index not in rated:
            continue
        h = hours.setdefault(bucket, {"kwh": 0.0, "estimated_kwh": 0.0, "unknown": False, "utils": [], "seconds": 0})
        h["seconds"] = max(h["seconds"], count)
        if util is not None:
            h["utils"].append(util)
        if power is not None:
            h["kwh"] += f.energy_kwh(power, count)
        elif util is not None and rated.get(index):
            kwh = f.energy_kwh(f.estimated_power_watts(util, rated[index]), count)
            h["kwh"] += kwh
            h["estimated_kwh"] += kwh
        else:
            h["unknown"] = True
    for h in hours.values():
        h["util"] = sum(h["utils"]) / len(h["utils"]) if h["utils"] else None
        h["idle"] = h["util"] is not None and h["util"] < idle_below
    return hours


def _hours(machine: Machine, lo: datetime, hi: datetime, idle_below: float) -> dict[datetime, dict[str, Any]]:
    rows = (row[1:] for row in hour_rows([machine.pk], lo, hi))
    return hours_of(rows, rated_watts(machine), idle_below)


def tokens_by_period(windows: list[throughput.WindowTokens], edges: list[datetime]) -> list[dict[str, int]]:
    """Generated, training and prompt tokens of ``windows`` in each period between consecutive
    ``edges``, each window in the period its stamp falls in, as reports count them
    (dashboard.core.periods), so a report and RoI over the same period agree exactly."""
    out = [{"generated": 0, "train": 0, "prompt": 0} for _ in edges[1:]]
    for w in windows:
        i = bisect_right(edges, w.ts) - 1
        if not 0 <= i < len(out):
            continue
        bucket = out[i]
        bucket["generated"] += w.generated
        bucket["train"] += w.train
        bucket["prompt"] += w.prompt
    return out


def tokens_in_periods(
    rows: QuerySet[ThroughputSample], machine_ids: Iterable[int], edges: list[datetime], step: int
) -> dict[int, list[dict[str, int]]]:
    """Per machine, what ``tokens_by_period(window_tokens(rows), edges)`` gives, summed in SQL per
    ``step``-second step (``throughput.step_sums``, the same best-source rule): a month of a busy
    machine, or a day of a 1,000-machine fleet, is too many windows to read into Python.

    ``rows`` are the windows in ``[edges[0], edges[-1])``. Every edge after the first must start a
    step (local midnights start a minute in every zone: ``step`` 60; UTC hours: 3600). The first may
    fall inside one; that step's windows, all at or after it, count from it."""
    out = {m: [{"generated": 0, "train": 0, "prompt": 0} for _ in edges[1:]] for m in machine_ids}
    for machine_id, start, *counts in throughput.step_sums(rows, list(throughput.KINDS.values()), step, "machine_id"):
        i = bisect_right(edges, max(datetime.fromtimestamp(start, UTC), edges[0])) - 1
        if 0 <= i < len(edges) - 1:
            for kind, n in zip(throughput.KINDS, counts, strict=True):
                out[machine_id][i][kind] += n
    return out


def _tokens_by_period(machine: Machine, edges: list[datetime]) -> list[dict[str, int]]:
    """The machine's tokens per period between ``edges`` (local days, and where a range starts)."""
    rows = throughput.machine_rows(machine, edges[0], edges[-1])
    return tokens_in_periods(rows, [machine.pk], edges, 60)[machine.pk]


def train_spans(machine_ids: list[int], lo: datetime, hi: datetime) -> QuerySet[JobAttempt, tuple]:
    """``(machine_id, started_at, ended_at, gpus)`` of the training attempts that overlap ``[lo, hi)``."""
    return (
        JobAttempt.objects.filter(
            machine_id__in=machine_ids, job__kind=Job.Kind.TRAIN, started_at__isnull=False, started_at__lt=hi
        )
        .exclude(ended_at__lte=lo)
        .order_by("pk")
        .values_list("machine_id", "started_at", "ended_at", "gpus")
    )


def gpu_seconds_by_period(spans: Iterable[tuple], now: datetime, edges: list[datetime]) -> list[float]:
    """GPU-seconds of training ``spans`` (started, ended or None: still running, GPUs) in each
    period between consecutive ``edges``."""
    out = [0.0] * (len(edges) - 1)
    for started, ended, gpus in spans:
        end = ended or now
        n = max(1, len(gpus or []))
        for i in range(len(out)):
            overlap = (min(end, edges[i + 1]) - max(started, edges[i])).total_seconds()
            if overlap > 0:
                out[i] += overlap * n
    return out


def _train_gpu_seconds(
    machine: Machine, lo: datetime, hi: datetime, now: datetime, edges: list[datetime]
) -> list[float]:
    spans = (row[1:] for row in train_spans([machine.pk], lo, hi))
    return gpu_seconds_by_period(spans, now, edges)


@dataclass
class Pricing:
    """What a machine's days are priced with: its profile (None: no cost) and value rates (None:
    no value, e.g. rates missing or in another currency than the profile)."""

    profile: Profile | None
    serve_rate: float | None = None
    train_token_rate: float | None = None
    train_hour_rate: float | None = None
    value_ok: bool = False


def pricing(profile: Profile | None, rates: ValueRates | None) -> Pricing:
    value_ok = rates is not None and (profile is None or rates.currency == profile.currency)
    if not value_ok:
        return Pricing(profile)
    return Pricing(
        profile,
        _num(rates.serve_per_million_generated),
        _num(rates.train_per_million_tokens),
        _num(rates.train_per_gpu_hour),
        True,
    )


def day_figures(
    a: datetime, b: datetime, hours: list[dict[str, Any]], tokens: dict[str, int], gpu_s: float, p: Pricing
) -> dict[str, Any]:
    """Energy, cost and value of the period ``[a, b)`` from its hours (in order), tokens and
    training GPU-seconds: the one place a day's money is computed."""
    profile = p.profile
    period_s = (b - a).total_seconds()
    d: dict[str, Any] = {
        "start": a,
        "end": b,
        "kwh": 0.0,
        "estimated_kwh": 0.0,
        "energy_unknown": False,
        "generated": 0,
        "train": 0,
        "prompt": 0,
        "idle_hours": 0.0,
        "idle_kwh": 0.0,
        "monitored_hours": 0.0,
    }
    for h in hours:
        host_kwh = f.energy_kwh(profile.host_power_watts, h["seconds"]) if profile else 0.0
        d["kwh"] += h["kwh"] + host_kwh
        d["estimated_kwh"] += h["estimated_kwh"]
        d["energy_unknown"] |= h["unknown"]
        d["monitored_hours"] += h["seconds"] / 3600
        if h["idle"]:
            d["idle_hours"] += h["seconds"] / 3600
            d["idle_kwh"] += h["kwh"] + host_kwh
    d.update(tokens)
    d["train_gpu_hours"] = gpu_s / 3600
    if profile:
        offset = (a - profile.in_service).total_seconds()
        d["amortisation"] = f.amortisation_cost(
            profile.purchase_price, profile.amortisation_s, offset, offset + period_s
        )
        d["fixed"] = f.fixed_cost(profile.fixed_monthly, period_s)
        price = profile.price_per_kwh or 0.0
        d["energy_cost"] = f.energy_cost(d["kwh"], price, profile.pue)
        d["cost"] = d["amortisation"] + d["fixed"] + d["energy_cost"]
        per_s = (d["amortisation"] + d["fixed"]) / period_s if period_s else 0.0
        d["idle_cost"] = per_s * d["idle_hours"] * 3600 + f.energy_cost(d["idle_kwh"], price, profile.pue)
    if p.value_ok:
        d["value_serve"] = d["generated"] / 1e6 * p.serve_rate if p.serve_rate is not None else 0.0
        if p.train_token_rate is not None:
            d["value_train"] = d["train"] / 1e6 * p.train_token_rate
        else:
            d["value_train"] = d["train_gpu_hours"] * (p.train_hour_rate or 0.0)
        d["value"] = d["value_serve"] + d["value_train"]
    return d


def service_start(profile: Profile | None, machine: Machine) -> datetime:
    """Where a machine's days begin: the hour its profile puts it in service, else its enrolment's."""
    return _floor_hour(profile.in_service if profile else machine.created_at)


def machine_roi(
    machine: Machine,
    since: datetime | None = None,
    until: datetime | None = None,
    idle_below_percent: float = DEFAULT_IDLE_BELOW_PERCENT,
    now: datetime | None = None,
    cached: bool = False,
) -> dict[str, Any]:
    """Energy, cost, value, RoI, payback and idle cost of one machine, per day and in total.

    Days are computed from the machine's start of service (so cumulative figures are lifetime
    figures); ``since`` only chooses which days are reported and summed. Tokens fall in the period
    their window's stamp is in; energy comes from hour rollups, each hour in the period it starts in.
    ``cached``: whole past days' inputs from ``fleet_days``' cache where they can be (no ``since``
    after the start of service, the default idle threshold): the same figures, fewer rows read.
    """
    now = now or timezone.now()
    until = min(until or now, now)
    profile = effective_profile(machine)
    rates = effective_rates(machine)
    problems: list[str] = []
    start = service_start(profile, machine)
    window_start = max(start, since) if since else start
    if until <= start:
        until = start + timedelta(hours=1)

    if profile is None:
        problems.append("set a cost profile: no purchase price is known for this machine or its assembly")
    elif profile.price_per_kwh is None:
        problems.append(
            "the cost profile comes from catalogue prices and has no electricity price: energy is not costed"
        )
    value_ok = rates is not None and (profile is None or rates.currency == profile.currency)
    if rates is None:
        problems.append("set value rates: nothing says what a token or a GPU-hour is worth")
    elif profile is not None and rates.currency != profile.currency:
        problems.append(
            f"the value rates are in {rates.currency} and the cost profile in {profile.currency}: "
            "value is not compared with cost across currencies"
        )
    prices = pricing(profile, rates)

    if cached and window_start == start and idle_below_percent == DEFAULT_IDLE_BELOW_PERCENT:
        # Whole days from service start at the default threshold: past days' inputs come from the
        # cache fleet_days keeps (the same rows, the same figures), only today's are read.
        from .fleet_days import machine_inputs

        edges, inputs = machine_inputs(machine, profile, rates, until, now)
    else:
        edges = day_edges(start, until, timezone.get_current_timezone())
        if window_start > start and window_start not in edges:
            edges = sorted([*edges, window_start])
        hours = _hours(machine, start, until, idle_below_percent)
        tokens = _tokens_by_period(machine, edges)
        hour_keys = sorted(hours)
        inputs = []
        k = 0
        for a, b in zip(edges, edges[1:], strict=False):
            in_period = []
            while k < len(hour_keys) and hour_keys[k] < b:
                if hour_keys[k] >= a:
                    in_period.append(hours[hour_keys[k]])
                k += 1
            inputs.append((in_period, tokens[len(inputs)]))
    gpu_s = _train_gpu_seconds(machine, start, until, now, edges)

    days: list[dict[str, Any]] = []
    cum_cost = cum_value = cum_running = 0.0
    for i in range(len(edges) - 1):
        a, b = edges[i], edges[i + 1]
        d = day_figures(a, b, *inputs[i], gpu_s[i], prices)
        cum_cost += d.get("cost", 0.0)
        cum_value += d.get("value", 0.0)
        cum_running += d.get("fixed", 0.0) + d.get("energy_cost", 0.0)
        d["cum_cost"] = cum_cost if profile else None
        d["cum_value"] = cum_value if value_ok else None
        d["cum_net"] = cum_value - cum_running
        days.append(d)

    window = [d for d in days if d["start"] >= window_start]
    out = _report(machine, profile, rates, value_ok, problems, days, window, window_start, until, idle_below_percent)
    out["efficiency"] = period_efficiency([machine], window_start, until, now)  # the period's jobs, by their time
    return out


def _sum(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return sum(values) if values else None


def _report(
    machine, profile, rates, value_ok, problems, days, window, window_start, until, idle_below
) -> dict[str, Any]:
    has_cost = profile is not None
    totals: dict[str, Any] = {
        "energy_kwh": sum(d["kwh"] for d in window),
        "energy_estimated_kwh": sum(d["estimated_kwh"] for d in window),
        "energy_incomplete": any(d["energy_unknown"] for d in window),
        "monitored_hours": sum(d["monitored_hours"] for d in window),
        "idle_hours": sum(d["idle_hours"] for d in window),
        "generated_tokens": sum(d["generated"] for d in window),
        "train_tokens": sum(d["train"] for d in window),
        "prompt_tokens": sum(d["prompt"] for d in window),
        "train_gpu_hours": sum(d["train_gpu_hours"] for d in window),
    }
    for key in ("energy_cost", "amortisation", "fixed", "cost", "idle_cost", "value_serve", "value_train", "value"):
        totals[key] = _sum(window, key) if (has_cost or key.startswith("value")) else None
    if not value_ok:
        totals.update(value_serve=None, value_train=None, value=None)
    tokens = totals["generated_tokens"] + totals["train_tokens"]
    totals["cost_per_million_tokens"] = f.cost_per_million_tokens(totals["cost"], tokens) if has_cost else None
    totals["roi_percent"] = (
        f.roi_percent(totals["value"], totals["cost"]) if has_cost and value_ok and totals["cost"] is not None else None
    )
    lifetime_cost = days[-1]["cum_cost"] if days else None
    lifetime_value = days[-1]["cum_value"] if days else None
    payback = _payback(profile, days, until) if has_cost and value_ok else {"status": "unknown", "date": None}
    return {
        "machine": machine.name,
        "assembly": assembly_key(machine),
        "currency": profile.currency if profile else (rates.currency if rates else None),
        "since": window_start.isoformat(),
        "until": until.isoformat(),
        "idle_below_percent": idle_below,
        "profile": profile.as_dict() if profile else None,
        "rates": rates_dict(rates),
        "problems": problems,
        "admin_url": reverse("admin:economics_costprofile_add") + f"?machine={machine.pk}",
        "totals": totals,
        "lifetime": {
            "cost": lifetime_cost,
            "value": lifetime_value,
            "roi_percent": f.roi_percent(lifetime_value, lifetime_cost)
            if lifetime_cost is not None and lifetime_value is not None
            else None,
        },
        "payback": payback,
        "break_even": _break_even(days) if has_cost and value_ok else None,
        "days": [_day_dict(d) for d in window],
    }


def rates_dict(rates: ValueRates | None) -> dict[str, Any] | None:
    if rates is None:
        return None
    return {
        "scope": rates.machine.name if rates.machine_id else "global",
        "currency": rates.currency,
        "serve_per_million_generated": _num(rates.serve_per_million_generated),
        "train_per_million_tokens": _num(rates.train_per_million_tokens),
        "train_per_gpu_hour": _num(rates.train_per_gpu_hour),
    }


def _has_data(d: dict[str, Any]) -> bool:
    """A day with telemetry or tokens: one without says nothing about what the machine earns."""
    return d["monitored_hours"] > 0 or bool(d["generated"] or d["train"] or d["prompt"])


def _payback(profile: Profile, days: list[dict], until: datetime) -> dict[str, Any]:
    """When net earnings (value − energy − fixed costs) cover the purchase price, projected at the
    net rate of the last week's days that have data (``days_used``; days without telemetry are left
    out rather than counted as earning nothing)."""
    for d in days:
        if d["cum_net"] >= profile.purchase_price:
            return {"status": "paid back", "date": d["end"].isoformat(), "recent_net_per_day": None, "days_used": None}
    recent = [d for d in days if d["end"] > until - RECENT and _has_data(d)]
    if not recent:
        return {"status": "no data in the last week", "date": None, "recent_net_per_day": None, "days_used": 0}
    seconds = sum((d["end"] - d["start"]).total_seconds() for d in recent)
    earned = sum(d.get("value", 0.0) - d.get("fixed", 0.0) - d.get("energy_cost", 0.0) for d in recent)
    rate = earned / seconds if seconds else 0.0
    left = f.payback_seconds(profile.purchase_price, days[-1]["cum_net"] if days else 0.0, rate)
    return {
        "status": "projected" if left is not None else "never at the recent rate",
        "date": (until + timedelta(seconds=left)).isoformat() if left is not None else None,
        "recent_net_per_day": rate * f.SECONDS_PER_DAY,
        "days_used": len(recent),
    }


def _break_even(days: list[dict]) -> dict[str, Any] | None:
    """The end of the day on which cumulative value last caught up with cumulative cost."""
    found = None
    below = True
    for d in days:
        if d["cum_value"] is None or d["cum_cost"] is None:
            return None
        if d["cum_value"] >= d["cum_cost"] and d["cum_cost"] > 0:
            if below:
                found = d
            below = False
        else:
            below = True
            found = None
    if found is None:
        return None
    return {
        "t": int(found["end"].timestamp() * 1000),
        "date": found["end"].isoformat(),
        "cum_value": found["cum_value"],
        "cum_cost": found["cum_cost"],
    }


def _day_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "t": int(d["start"].timestamp() * 1000),
        "end": int(d["end"].timestamp() * 1000),
        "energy_kwh": d["kwh"],
        "energy_estimated_kwh": d["estimated_kwh"],
        "energy_cost": d.get("energy_cost"),
        "amortisation": d.get("amortisation"),
        "fixed": d.get("fixed"),
        "cost": d.get("cost"),
        "value": d.get("value"),
        "value_serve": d.get("value_serve"),
        "value_train": d.get("value_train"),
        "cum_cost": d["cum_cost"],
        "cum_value": d["cum_value"],
        "generated_tokens": d["generated"],
        "train_tokens": d["train"],
        "train_gpu_hours": d["train_gpu_hours"],
        "idle_hours": d["idle_hours"],
        "idle_cost": d.get("idle_cost"),
    }
