"""The fleet over time: utilisation (mean and p95 across devices) and cost, value and RoI per day.

Composed here because it spans apps: utilisation from telemetry rollups (``fleet``), money from
each machine's days as its RoI counts them (``economics.fleet_days``: the same figures as
``economics.roi.machine_roi``, read in bulk with past days cached), summed. Only machines that count
money in the fleet's main currency are summed; the others are named, never converted.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from django.core.cache import cache
from django.db import connection

from dashboard.core.periods import step_start_sql, window_filter
from dashboard.core.stats import P95, percentile
from dashboard.economics import formulas
from dashboard.economics.fleet_days import fleet_days
from dashboard.economics.roi import machine_roi
from dashboard.fleet.models import GpuRollup, Machine, SystemRollup
from dashboard.fleet.series import MINUTE_MAX, step_for
from dashboard.fleet.visibility import only

MONEY_MIN_SPAN = timedelta(days=7)  # per-day figures: at least a week of days, whatever the range


MONEY_SHARED_S = 300  # per-day bars: today's grows by minutes, and a day of a large fleet is ~0.5 s to sum


def history(
    since: datetime, until: datetime, machine_ids: Collection[int] | None, asked: tuple[str, str | None]
) -> dict[str, Any]:
    """``/api/v1/fleet/history``: utilisation and money, each shared by every request that ``asked``
    for the same figures of the same machines: utilisation for a quarter of its step (10 s to
    2 min), money for 5 minutes, and every range up to a week (the page's 15 min to 7 d) asks for
    the same money, the last seven days.

    The fleet page fetches it again every 10 s in each open tab, and at 1,000 machines a day of it
    is seconds of SQL (bench/README.md, "Fleet-wide reads of the rollups"): a wall screen left on
    24 h must not cost a core. A 5-minute step's last point moves no faster than that anyway."""
    scope = "all" if machine_ids is None else hashlib.sha1(",".join(map(str, sorted(machine_ids))).encode()).hexdigest()
    asked_key = f"{asked[0]}:{asked[1] or ''}"
    util_key = f"fleet-history:utilisation:{asked_key}:{scope}"
    live_week = asked[1] is None and until - since <= MONEY_MIN_SPAN  # ``money`` spans the last 7 days
    money_key = f"fleet-history:money:{'last-week' if live_week else asked_key}:{scope}"
    found = cache.get_many([util_key, money_key])
    util = found.get(util_key)
    if util is None:
        util = utilisation(since, until, machine_ids)
        cache.set(util_key, util, max(10, min(120, util["step_s"] // 4)))
    spent = found.get(money_key)
    if spent is None:
        spent = money(since, until, machine_ids=machine_ids)
        cache.set(money_key, spent, MONEY_SHARED_S)
    return {"utilisation": util, "money": spent}


def utilisation(since: datetime, until: datetime, machine_ids: Collection[int] | None = None) -> dict[str, Any]:
    """Per time step, the mean and the 95th percentile of every GPU's utilisation in the fleet
    (each device's step mean counts once); CPU utilisation of every machine for a fleet without GPUs.
    Only the machines of ``machine_ids`` (None: every machine)."""
    resolution = 60 if until - since <= MINUTE_MAX else 3600
    step = step_for(until - since, resolution)
    gpu = only(GpuRollup.objects.filter(resolution_s=resolution, **window_filter(since, until, "bucket")), machine_ids)
    has_gpus = gpu.exists()
    if has_gpus and connection.vendor == "postgresql":
        # In SQL: at 500 machines × 8 GPUs a week of hour rollups is 670,000 rows, 12 s in Python.
        t, mean, p95 = _gpu_steps_in_sql(resolution, step, since, until, machine_ids)
        return _result("gpu", "GPU utilisation", step, since, until, t, mean, p95)
    if has_gpus:
        rows = gpu.values_list("machine_id", "gpu_index", "bucket", "util_percent_mean")
        scope, label = "gpu", "GPU utilisation"
    else:
        rows = only(
            SystemRollup.objects.filter(resolution_s=resolution, **window_filter(since, until, "bucket")), machine_ids
        ).values_list("machine_id", "bucket", "cpu_percent_mean")
        rows = ((m, 0, b, v) for m, b, v in rows)
        scope, label = "cpu", "CPU utilisation"
    # Each device's mean over the step first, so a device with more buckets does not weigh more.
    per_device: dict[int, dict[tuple[int, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    for machine_id, index, bucket, value in rows:
        if value is None:
            continue
        epoch = int(bucket.timestamp())
        per_device[epoch - epoch % step][(machine_id, index)].append(value)
    t, mean, p95 = [], [], []
    for start in sorted(per_device):
        values = [sum(v) / len(v) for v in per_device[start].values()]
        t.append((start + step // 2) * 1000)
        mean.append(round(sum(values) / len(values), 3))
        p95.append(round(percentile(values, P95) or 0.0, 3))
    return _result(scope, label, step, since, until, t, mean, p95)


def _gpu_steps_in_sql(
    resolution: int, step: int, since: datetime, until: datetime, machine_ids: Collection[int] | None
) -> tuple[list[int], list[float], list[float]]:
    """The same figures as the Python path: each device's mean over the step, then their mean and
    p95 (``percentile_cont`` interpolates linearly between closest ranks, as core/stats does)."""
    source = """
        FROM fleet_gpurollup
        WHERE resolution_s = %(resolution)s AND bucket >= %(since)s AND bucket < %(until)s
          AND util_percent_mean IS NOT NULL {machines}
    """
    if step == resolution:
        # A step of one bucket holds one row per device, its mean: no regrouping per device, which
        # was two thirds of the query (1 h of 1,000 machines: 0.36 -> 0.12 s; bench/README.md).
        sql = f"""
            SELECT {{start}}, AVG(util_percent_mean),
                   PERCENTILE_CONT(%(q)s) WITHIN GROUP (ORDER BY util_percent_mean)
            {source} GROUP BY 1 ORDER BY 1
        """
    else:
        sql = f"""
            WITH device AS (
                SELECT {{start}} AS start, AVG(util_percent_mean) AS value
                {source} GROUP BY 1, machine_id, gpu_index
            )
            SELECT start, AVG(value), PERCENTILE_CONT(%(q)s) WITHIN GROUP (ORDER BY value)
            FROM device GROUP BY start ORDER BY start
        """
    params = {"resolution": resolution, "since": since, "until": until, "q": P95}
    if machine_ids is not None:
        params["machines"] = list(machine_ids)
    sql = sql.format(
        start=step_start_sql("bucket", step, connection.vendor),
        machines="" if machine_ids is None else "AND machine_id = ANY(%(machines)s::bigint[])",  # see visibility.only
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    t = [(int(start) + step // 2) * 1000 for start, _, _ in rows]
    return t, [round(float(m), 3) for _, m, _ in rows], [round(float(p), 3) for _, _, p in rows]


def _result(
    scope: str, label: str, step: int, since: datetime, until: datetime, t: list, mean: list, p95: list
) -> dict[str, Any]:
    return {
        "scope": scope,
        "label": label,
        "unit": "%",
        "step_s": step,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "t": t,
        "mean": mean,
        "p95": p95,
    }


def money(
    since: datetime, until: datetime, now: datetime | None = None, machine_ids: Collection[int] | None = None
) -> dict[str, Any]:
    """Cost, value and RoI per day for the fleet (``machine_ids``; None: every machine): each
    machine's days (``fleet_days``), summed."""
    since = min(since, until - MONEY_MIN_SPAN)
    machines = list(only(Machine.objects.order_by("name"), machine_ids, "pk").prefetch_related("accelerators"))
    return _summed(fleet_days(machines, since, until, now), since, until)


def money_uncached(since: datetime, until: datetime, now: datetime | None = None) -> dict[str, Any]:
    """``money`` from every machine's whole ``machine_roi``: the reference it must equal (tests and
    bench/fleet_money.py compare the two)."""
    since = min(since, until - MONEY_MIN_SPAN)
    return _summed([machine_roi(m, since, until, now=now) for m in Machine.objects.order_by("name")], since, until)


def _summed(reports: list[dict[str, Any]], since: datetime, until: datetime) -> dict[str, Any]:
    currencies = Counter(r["currency"] for r in reports if r["currency"])
    currency = currencies.most_common(1)[0][0] if currencies else None
    counted = [r for r in reports if r["currency"] == currency and currency is not None]
    days: dict[int, dict[str, Any]] = {}
    for report in counted:
        for d in report["days"]:
            day = days.setdefault(d["t"], {"t": d["t"], "cost": None, "value": None})
            for key in ("cost", "value"):
                if d[key] is not None:
                    day[key] = (day[key] or 0.0) + d[key]
    rows = [days[t] for t in sorted(days)]
    for day in rows:
        known = day["cost"] is not None and day["value"] is not None
        day["roi_percent"] = formulas.roi_percent(day["value"], day["cost"]) if known else None
    return {
        "currency": currency,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "machines": [r["machine"] for r in counted],
        "left_out": sorted(r["machine"] for r in reports if r["currency"] not in (None, currency)),
        "unset": sorted(r["machine"] for r in reports if r["profile"] is None or r["rates"] is None),
        "days": rows,
    }
