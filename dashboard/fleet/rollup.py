"""Minute and hour rollups, recomputed from the rows below them.

``catch_up()`` finds the machines that received rows since the last run, recomputes every minute
bucket those rows fall in from raw samples, then every hour bucket from the minutes. Recomputing
(rather than adding to) a bucket makes it idempotent: running twice gives the same rows, and a
late or replayed batch simply gets its buckets recomputed on the next run.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone as dt_timezone

from django.db import transaction
from django.db.models import Avg, Max, Min, Sum
from django.db.models.functions import TruncHour, TruncMinute
from django.utils import timezone

from hwprobe.schema import GPU_METRICS, SYSTEM_METRICS, Metric

from .models import GpuRollup, GpuSample, RollupState, SystemRollup, SystemSample, metric_columns

UTC = dt_timezone.utc
MINUTE, HOUR = 60, 3600
# Rows committed late by a slow transaction still carry a received_at before the watermark;
# looking this far back catches them (buckets are recomputed, so overlap costs nothing but time).
MARGIN = timedelta(minutes=2)
MACHINES_PER_QUERY = 100


def _aggregates(metrics: tuple[Metric, ...]) -> dict:
    out: dict = {"count": Sum("count")}
    for metric in metrics:
        if metric.kind == "gauge":
            out[f"{metric.name}_min"] = Min(f"{metric.name}_min")
            # Windows are (nearly) equal in length, so the mean of means is the mean.
            out[f"{metric.name}_mean"] = Avg(f"{metric.name}_mean")
            out[f"{metric.name}_max"] = Max(f"{metric.name}_max")
        else:
            out[metric.name] = Max(metric.name)  # totals, limits, cumulative counters
    return out


def _floor(t: datetime, seconds: int) -> datetime:
    epoch = int(t.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=UTC)


def _rollup(source, target, metrics, time_field, trunc, resolution, keys, machine_ids, lo, hi) -> int:
    """Recompute ``target`` buckets of ``resolution`` in [lo, hi) for these machines from ``source``."""
    qs = source.objects.filter(machine_id__in=machine_ids, **{f"{time_field}__gte": lo, f"{time_field}__lt": hi})
    if source in (SystemRollup, GpuRollup):
        qs = qs.filter(resolution_s=MINUTE)
    rows = (
        qs.annotate(b=trunc(time_field, tzinfo=UTC))
        .values("machine_id", *keys, "b")
        .annotate(**_aggregates(metrics))
        .order_by()
    )
    objs = []
    columns = [c for m in metrics for c in metric_columns(m)]
    for row in rows:
        fields = {c: row[c] for c in columns}
        objs.append(
            target(
                machine_id=row["machine_id"],
                resolution_s=resolution,
                bucket=row["b"],
                count=row["count"] or 0,
                **{k: row[k] for k in keys},
                **fields,
            )
        )
    unique = ["machine", "resolution_s", "bucket", *keys]
    target.objects.bulk_create(
        objs, batch_size=500, update_conflicts=True, unique_fields=unique, update_fields=["count", *columns]
    )
    return len(objs)


def rollup_range(machine_ids: list[int], lo: datetime, hi: datetime) -> int:
    """Recompute minute and hour buckets covering [lo, hi] for these machines; return rows written."""
    m_lo, m_hi = _floor(lo, MINUTE), _floor(hi, MINUTE) + timedelta(seconds=MINUTE)
    h_lo, h_hi = _floor(lo, HOUR), _floor(hi, HOUR) + timedelta(seconds=HOUR)
    written = 0
    with transaction.atomic():
        written += _rollup(SystemSample, SystemRollup, SYSTEM_METRICS, "ts", TruncMinute, MINUTE, [], machine_ids, m_lo, m_hi)
        written += _rollup(GpuSample, GpuRollup, GPU_METRICS, "ts", TruncMinute, MINUTE, ["gpu_index"], machine_ids, m_lo, m_hi)
        written += _rollup(SystemRollup, SystemRollup, SYSTEM_METRICS, "bucket", TruncHour, HOUR, [], machine_ids, h_lo, h_hi)
        written += _rollup(GpuRollup, GpuRollup, GPU_METRICS, "bucket", TruncHour, HOUR, ["gpu_index"], machine_ids, h_lo, h_hi)
    return written


def catch_up(now: datetime | None = None) -> int:
    """Roll up everything received since the last run; safe to run twice or concurrently."""
    now = now or timezone.now()
    state = RollupState.objects.filter(name="rollup").first()
    since = (state.watermark - MARGIN) if state else datetime(2000, 1, 1, tzinfo=UTC)
    touched = (
        SystemSample.objects.filter(received_at__gte=since, received_at__lt=now)
        .values("machine_id")
        .annotate(lo=Min("ts"), hi=Max("ts"))
        .order_by("machine_id")
    )
    touched = list(touched)
    written = 0
    for start in range(0, len(touched), MACHINES_PER_QUERY):
        chunk = touched[start : start + MACHINES_PER_QUERY]
        lo = min(r["lo"] for r in chunk)
        hi = max(r["hi"] for r in chunk)
        written += rollup_range([r["machine_id"] for r in chunk], lo, hi)
    RollupState.objects.update_or_create(name="rollup", defaults={"watermark": now})
    return written
