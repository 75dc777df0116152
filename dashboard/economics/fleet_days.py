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
estimate of energy uses them). Today is read on every request; the range's first, partial day
comes from its whole day's entry (hours keep their stamps, tokens are kept per hour), with only the
token windows before its first whole hour read.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any

from django.core.cache import cache
from django.db.models import Count, Max, Q, Sum
from django.utils import timezone

from dashboard.core.periods import day_edges, window_filter
from dashboard.fleet import throughput
from dashboard.fleet.models import GpuRollup, Machine, ThroughputSample

from . import roi
from .hardware import all_specs

CACHE_VERSION = 2  # bump when what an entry holds changes
CACHE_TTL_S = 9 * 86400  # a day is asked for while it is in a week's range; the first, partial day is read live
Span = tuple[datetime, datetime]
_HOUR_KEYS = ("kwh", "estimated_kwh", "unknown", "seconds", "idle")


def _is_midnight(t: datetime, zone: tzinfo) -> bool:
    local = t.astimezone(zone)
    return local.time() == time.min and datetime.combine(local.date(), time.min, tzinfo=zone) == t


class _Machine:
    """One machine's part of a request: its prices, its periods in the range and where each comes from."""

    def __init__(
        self,
        machine: Machine,
        since: datetime,
        until: datetime,
        zone: tzinfo,
        lookups: dict,
        prices: tuple[roi.Profile | None, Any] | None = None,
    ) -> None:
        """``prices``: the machine's profile and value rates when the caller has read them already."""
        self.machine = machine
        if prices is None:
            self.profile = roi.effective_profile(machine, lookups["profiles"], lookups["specs"])
            self.rates = roi.effective_rates(machine, lookups["rates"])
        else:
            self.profile, self.rates = prices
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

    def source(self, span: Span, now: datetime, zone: tzinfo) -> Span | None:
        """The closed span whose cached inputs hold ``span``'s: itself, or for the range's first,
        partial day the whole day it is the end of; None: read live."""
        if self.closed(span, now, zone):
            return span
        a, b = span
        whole = (max(datetime.combine(a.astimezone(zone).date(), time.min, tzinfo=zone), self.start), b)
        return whole if whole[0] < a and self.closed(whole, now, zone) else None


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


def _hour_edges(a: datetime, b: datetime) -> list[datetime]:
    """``a``, the UTC hours after it, ``b``: where tokens are split so that a cached day serves any
    stretch of it that starts on the hour."""
    edges = [a]
    t = _ceil_hour(a)
    while t < b:
        if t > a:
            edges.append(t)
        t += timedelta(hours=1)
    return [*edges, b]


def _ceil_hour(t: datetime) -> datetime:
    floor = t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return floor if floor == t else floor + timedelta(hours=1)


def _windows(span: Span, ids: list[int]) -> dict[int, list[throughput.WindowTokens]]:
    out: dict[int, list] = defaultdict(list)
    for w in throughput.window_tokens(ThroughputSample.objects.filter(machine_id__in=ids, **window_filter(*span))):
        out[w.machine_id].append(w)
    return out


def _tokens_per_hour(span: Span, ids: list[int], edges: list[datetime]) -> dict[int, list[dict[str, int]]]:
    """What ``roi.tokens_by_period(window_tokens(...), edges)`` gives each machine, summed in SQL
    per UTC hour (``edges`` are ``span``'s start and the UTC hours in it): a day of a 1,000-machine
    fleet is millions of token rows, which Python read one by one (bench/README.md)."""
    rows = ThroughputSample.objects.filter(machine_id__in=ids, **window_filter(*span))
    return roi.tokens_in_periods(rows, ids, edges, 3600)


def _read(span: Span, machines: list[_Machine]) -> dict[int, tuple[list[tuple], list[tuple]]]:
    """The inputs of ``span`` for ``machines`` from their rows, as ``machine_roi`` reads them: per
    machine, its hours in order (stamp and ``_HOUR_KEYS``) and its tokens per hour (``_hour_edges``)."""
    a, b = span
    ids = [m.machine.pk for m in machines]
    rated = {m.machine.pk: m.rated for m in machines}
    rows: dict[int, list] = defaultdict(list)
    for machine_id, *row in roi.hour_rows(ids, a, b):
        rows[machine_id].append(row)
    edges = _hour_edges(a, b)
    per_hour = _tokens_per_hour(span, ids, edges)
    out = {}
    for machine_id in ids:
        hours = roi.hours_of(rows[machine_id], rated[machine_id], roi.DEFAULT_IDLE_BELOW_PERCENT)
        tokens = per_hour[machine_id]
        out[machine_id] = (
            [(k, *(hours[k][name] for name in _HOUR_KEYS)) for k in sorted(hours)],
            [(edge, t["generated"], t["train"], t["prompt"]) for edge, t in zip(edges, tokens, strict=False)],
        )
    return out


def _sliver_end(span: Span) -> datetime:
    """Where the windows read for a derived first day end: the first UTC hour after its start, or
    the day's own end if that comes first (a range starting in the last half hour before midnight
    in a zone half an hour off UTC, such as Adelaide, would otherwise count the next day's first
    half hour in it)."""
    return min(_ceil_hour(span[0]), span[1])


def _derive(value: tuple[list[tuple], list[tuple]], span: Span, sliver: list[throughput.WindowTokens]) -> tuple:
    """The hours and tokens of ``span``, a read or cached span's stretch from ``span``'s start on:
    its hours stamped from that start, its tokens per hour from the hour after it, and ``sliver``,
    the windows stamped in ``[start, _sliver_end(span))``."""
    a = span[0]
    hours, per_hour = value
    cut = _sliver_end(span) if per_hour and a > per_hour[0][0] else a
    tokens = roi.tokens_by_period(sliver, [a, cut])[0] if cut > a else {"generated": 0, "train": 0, "prompt": 0}
    for edge, generated, train, prompt in per_hour:
        if edge >= cut:
            tokens["generated"] += generated
            tokens["train"] += train
            tokens["prompt"] += prompt
    return [h[1:] for h in hours if h[0] >= a], tokens


def fleet_days(
    machines: list[Machine], since: datetime, until: datetime, now: datetime | None = None
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
    inputs = _inputs(plans, now, zone)

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


def machine_inputs(
    machine: Machine, profile: roi.Profile | None, rates: Any, until: datetime, now: datetime
) -> tuple[list[datetime], list[tuple[list[dict[str, Any]], dict[str, int]]]]:
    """``roi.machine_roi``'s days of one machine from its start of service to ``until`` (already at
    most ``now``), at the default idle threshold: the day edges and per day its hours (dicts of the
    keys ``roi.day_figures`` reads, in order) and tokens, whole past days from the cache as
    ``fleet_days`` keeps them. ``profile`` and ``rates``: the machine's, as the caller read them."""
    zone = timezone.get_current_timezone()
    plan = _Machine(machine, datetime.min.replace(tzinfo=UTC), until, zone, {"specs": all_specs()}, (profile, rates))
    inputs = _inputs([plan], now, zone)
    days = []
    for span in plan.spans():
        hours, tokens = inputs[span, machine.pk]
        days.append(([dict(zip(_HOUR_KEYS, h, strict=True)) for h in hours], tokens))
    return plan.edges, days


def _inputs(plans: list[_Machine], now: datetime, zone: tzinfo) -> dict[tuple[Span, int], tuple]:
    """Per span of each plan and machine id: its hours (``_HOUR_KEYS`` tuples) and tokens."""
    # Where each machine's periods come from: a closed span's cached inputs, else its rows now.
    sources: dict[tuple[Span, int], Span | None] = {}
    by_source: dict[Span, list[_Machine]] = defaultdict(list)
    for plan in plans:
        for span in plan.spans():
            src = sources[span, plan.machine.pk] = plan.source(span, now, zone)
            by_source[src or span].append(plan)
    closed = {s: by_source[s] for s in {src for src in sources.values() if src is not None}}
    prints = _fingerprints({s: [p.machine.pk for p in ps] for s, ps in closed.items()})
    keys = {s: _key(s, ps, prints[s]) for s, ps in closed.items()}
    cached = cache.get_many(list(keys.values())) if keys else {}
    values: dict[tuple[Span, int], tuple] = {}
    fresh = {}
    for src, ps in by_source.items():
        entry = cached.get(keys.get(src, ""))
        read = entry if entry is not None else _read(src, ps)
        values.update(((src, machine_id), value) for machine_id, value in read.items())
        if src in keys and entry is None:
            fresh[keys[src]] = read
    if fresh:
        cache.set_many(fresh, CACHE_TTL_S)
    # The range's first day from its whole day's inputs: only the windows before its first hour are read.
    slivers: dict[Span, list[int]] = defaultdict(list)
    for (span, machine_id), src in sources.items():
        if src is not None and src != span and _sliver_end(span) > span[0]:
            slivers[span[0], _sliver_end(span)].append(machine_id)
    sliver_windows = {s: _windows(s, ids) for s, ids in slivers.items()}
    inputs: dict[tuple[Span, int], tuple] = {}
    for (span, machine_id), src in sources.items():
        sliver = sliver_windows.get((span[0], _sliver_end(span)), {}).get(machine_id, [])
        inputs[span, machine_id] = _derive(values[src or span, machine_id], span, sliver)
    return inputs
