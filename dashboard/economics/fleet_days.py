"""Every machine's cost and value per day over a range: the fleet's money over time, for a fleet.

``roi.machine_roi`` answers for one machine and recomputes its days from its start of service (its
cumulative figures need them), a dozen queries and every row of its life each time; summed over a
fleet on every request that grew with fleet size times age. This module gives the same per-day
figures, computed by the same function (``roi.day_figures``), from a few bulk queries over the
range only, and keeps the inputs of each whole past day in Django's cache.

What is cached is not money but what a day's money is computed from: per machine, each hour's
energy and seconds (``roi.hours_of``) and the day's tokens. Prices (cost profiles, value rates,
their currency) and training GPU-seconds (a few attempt rows) are applied on every request, so
editing a profile or rates needs no invalidation. A past day is not frozen either: an agent that
catches up after an outage, or a rollup recomputed for a late minute, changes its rows, so each
entry is keyed on a fingerprint of them, taken in SQL (per machine: the hour rollups' count and
summed seconds, the token rows' count and highest id), and on each machine's rated powers (an
estimate of energy uses them). The range's first, partial day and today are read every time.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from datetime import datetime, time, timedelta, tzinfo
from typing import Any

from django.core.cache import cache
from django.db.models import Count, Max, Q, Sum
from django.utils import timezone

from dashboard.core.periods import day_edges, window_filter
from dashboard.fleet import throughput
from dashboard.fleet.models import GpuRollup, Machine, ThroughputSample

from . import roi
from .hardware import all_specs

CACHE_VERSION = 1  # bump when what an entry holds changes
CACHE_TTL_S = 9 * 86400  # a day is asked for while it is in a week's range; the first, partial day is read live
Span = tuple[datetime, datetime]
_HOUR_KEYS = ("kwh", "estimated_kwh", "unknown", "seconds", "idle")


def _is_midnight(t: datetime, zone: tzinfo) -> bool:
    local = t.astimezone(zone)
    return local.time() == time.min and datetime.combine(local.date(), time.min, tzinfo=zone) == t


class _Machine:
    """One machine's part of a request: its prices, its periods in the range and where each comes from."""

    def __init__(self, machine: Machine, since: datetime, until: datetime, zone: tzinfo, lookups: dict) -> None:
        self.machine = machine
        self.profile = roi.effective_profile(machine, lookups["profiles"], lookups["specs"])
        self.rates = roi.effective_rates(machine, lookups["rates"])
        self.rated = roi.rated_watts(machine, lookups["specs"])
        start = roi.service_start(self.profile, machine)
        end = (
            until if until > start else start + timedelta(hours=1)
        )  # as machine_roi reports a machine not yet in service
        self.edges = day_edges(max(start, since), end, zone)
        self.start = start

    def spans(self) -> list[Span]:
        return list(zip(self.edges, self.edges[1:], strict=False))

    def closed(self, span: Span, now: datetime, zone: tzinfo) -> bool:
        """A whole past day (or the machine's first, from its start of service): its bounds never move."""
        a, b = span
        return b <= now and _is_midnight(b, zone) and (a == self.start or _is_midnight(a, zone))


def _fingerprints(spans: dict[Span, list[int]]) -> dict[Span, dict[int, tuple]]:
    """Per span and machine, what changes when the rows a day is computed from change."""
    if not spans:
        return {}
    ordered = list(spans)
    lo, hi = min(a for a, _ in ordered), max(b for _, b in ordered)
    ids = sorted({m for ms in spans.values() for m in ms})
    out: dict[Span, dict[int, tuple]] = {s: defaultdict(tuple) for s in ordered}
    queries = (
        (
            GpuRollup.objects.filter(resolution_s=3600),
            "bucket",
            lambda q: (Count("pk", filter=q), Sum("count", filter=q)),
        ),
        (ThroughputSample.objects.all(), "ts", lambda q: (Count("pk", filter=q), Max("pk", filter=q))),
    )
    for rows, field, aggregates in queries:
        annotations = {}
        for j, (a, b) in enumerate(ordered):
            first, second = aggregates(Q(**window_filter(a, b, field)))
            annotations[f"a{j}"], annotations[f"b{j}"] = first, second
        found = (
            rows.filter(machine_id__in=ids, **window_filter(lo, hi, field))
            .order_by()
            .values("machine_id")
            .annotate(**annotations)
        )
        for row in found:
            for j, span in enumerate(ordered):
                out[span][row["machine_id"]] += (row[f"a{j}"], row[f"b{j}"])
    return out


def _key(span: Span, machines: list[_Machine], prints: dict[int, tuple]) -> str:
    parts = [span[0].isoformat(), span[1].isoformat()]
    for m in sorted(machines, key=lambda m: m.machine.pk):
        parts.append(repr((m.machine.pk, sorted(m.rated.items()), prints.get(m.machine.pk, ()))))
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()
    return f"fleet-days:{CACHE_VERSION}:{int(span[0].timestamp())}:{digest}"


def _read(span: Span, machines: list[_Machine]) -> dict[int, tuple[list[tuple], dict[str, int]]]:
    """The inputs of ``span`` for ``machines`` from their rows: per machine, its hours (in order)
    and tokens, as ``machine_roi`` reads them."""
    a, b = span
    ids = [m.machine.pk for m in machines]
    rated = {m.machine.pk: m.rated for m in machines}
    rows: dict[int, list] = defaultdict(list)
    for machine_id, *row in roi.hour_rows(ids, a, b):
        rows[machine_id].append(row)
    windows: dict[int, list] = defaultdict(list)
    for w in throughput.window_tokens(ThroughputSample.objects.filter(machine_id__in=ids, **window_filter(a, b))):
        windows[w.machine_id].append(w)
    out = {}
    for machine_id in ids:
        hours = roi.hours_of(rows[machine_id], rated[machine_id], roi.DEFAULT_IDLE_BELOW_PERCENT)
        out[machine_id] = (
            [tuple(hours[k][name] for name in _HOUR_KEYS) for k in sorted(hours)],
            roi.tokens_by_period(windows[machine_id], [a, b])[0],
        )
    return out


def fleet_days(
    machines: list[Machine], since: datetime, until: datetime, now: datetime | None = None, use_cache: bool = True
) -> list[dict[str, Any]]:
    """Per machine, as ``roi.machine_roi(machine, since, until)`` reports it: ``machine``, ``currency``,
    ``profile`` and ``rates`` (None when unset) and ``days`` (``t`` in ms, ``cost``, ``value``; None
    where unknown), the same figures to the last bit. ``machines`` should come with their
    accelerators prefetched."""
    now = now or timezone.now()
    until = min(until, now)
    zone = timezone.get_current_timezone()
    lookups = {"profiles": roi.cost_profile_rows(), "rates": roi.value_rate_rows(), "specs": all_specs()}
    plans = [_Machine(m, since, until, zone, lookups) for m in machines]

    by_span: dict[Span, list[_Machine]] = defaultdict(list)
    for plan in plans:
        for span in plan.spans():
            by_span[span].append(plan)
    inputs: dict[tuple[Span, int], tuple] = {}
    live: dict[Span, list[_Machine]] = defaultdict(list)
    closed = {s: [p for p in ps if p.closed(s, now, zone)] for s, ps in by_span.items()} if use_cache else {}
    prints = _fingerprints({s: [p.machine.pk for p in ps] for s, ps in closed.items() if ps})
    keys = {s: _key(s, ps, prints[s]) for s, ps in closed.items() if ps}
    cached = cache.get_many(list(keys.values())) if keys else {}
    for span, ps in by_span.items():
        entry = cached.get(keys.get(span, ""))
        closed_ids = {p.machine.pk for p in closed.get(span, [])}
        for p in ps:
            if entry is not None and p.machine.pk in closed_ids:
                inputs[span, p.machine.pk] = entry[p.machine.pk]
            else:
                live[span].append(p)
    fresh = {}
    for span, ps in live.items():
        for machine_id, value in _read(span, ps).items():
            inputs[span, machine_id] = value
        if span in keys and keys[span] not in cached:
            fresh[keys[span]] = {p.machine.pk: inputs[span, p.machine.pk] for p in closed[span]}
    if fresh:
        cache.set_many(fresh, CACHE_TTL_S)

    spans_of: dict[int, list] = defaultdict(list)
    lo = min((p.edges[0] for p in plans), default=since)
    hi = max((p.edges[-1] for p in plans), default=until)
    for machine_id, *span in roi.train_spans([p.machine.pk for p in plans], lo, hi):
        spans_of[machine_id].append(span)

    out = []
    for plan in plans:
        prices = roi.pricing(plan.profile, plan.rates)
        gpu_s = roi.gpu_seconds_by_period(spans_of[plan.machine.pk], now, plan.edges)
        days = []
        for i, span in enumerate(plan.spans()):
            hours, tokens = inputs[span, plan.machine.pk]
            d = roi.day_figures(*span, [dict(zip(_HOUR_KEYS, h, strict=True)) for h in hours], tokens, gpu_s[i], prices)
            days.append({"t": int(span[0].timestamp() * 1000), "cost": d.get("cost"), "value": d.get("value")})
        profile, rates = plan.profile, plan.rates
        out.append(
            {
                "machine": plan.machine.name,
                "currency": profile.currency if profile else (rates.currency if rates else None),
                "profile": profile.as_dict() if profile else None,
                "rates": roi.rates_dict(rates),
                "days": days,
            }
        )
    return out
