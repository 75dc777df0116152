"""Time series for charts: pick the resolution from the range, return about a chart's width of points.

Ranges up to ``RAW_MAX`` read raw windows, up to ``MINUTE_MAX`` minute rollups, beyond that hour
rollups, so a 7-day chart reads at most 168 rows per device.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Avg, Max, Min

from dashboard.core.periods import StepStart, window_filter
from hwprobe.schema import GPU_METRICS, SYSTEM_METRICS, Metric

from .models import Accelerator, GpuRollup, GpuSample, Machine, SystemRollup, SystemSample

UTC = UTC
RAW_MAX = timedelta(hours=3)
MINUTE_MAX = timedelta(days=3)
TARGET_POINTS = 600
NICE_STEPS = (10, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)

METRICS: dict[str, tuple[str, Metric]] = {f"system.{m.name}": ("system", m) for m in SYSTEM_METRICS}
METRICS.update({f"gpu.{m.name}": ("gpu", m) for m in GPU_METRICS})


class SeriesError(ValueError):
    pass


def resolution_for(span: timedelta) -> int:
    """0 for raw windows, else the rollup resolution in seconds."""
    if span <= RAW_MAX:
        return 0
    if span <= MINUTE_MAX:
        return 60
    return 3600


def step_for(span: timedelta, resolution: int) -> int:
    """A round step in seconds giving at most about TARGET_POINTS points."""
    wanted = span.total_seconds() / TARGET_POINTS
    for step in NICE_STEPS:
        if step >= wanted and step >= resolution:
            return step
    return NICE_STEPS[-1]


def _device_name(acc: Accelerator | None, index: int) -> str:
    if acc is None:
        return f"GPU {index}"
    short = acc.name.replace("NVIDIA ", "")
    return f"GPU {index} · {short}" + (f" ({acc.mig_profile})" if acc.mig_profile else "")


def machine_series(machine: Machine, metric_name: str, since: datetime, until: datetime) -> dict[str, Any]:
    """Points of one metric for one machine, one series per device, times in epoch milliseconds."""
    if metric_name not in METRICS:
        raise SeriesError(f"metric: unknown metric {metric_name!r}; known: {', '.join(sorted(METRICS))}")
    if until <= since:
        raise SeriesError("since: must be before until")
    scope, metric = METRICS[metric_name]
    span = until - since
    resolution = resolution_for(span)
    # A range longer than the machine's data (7 d of a machine that reported for 30 min) is read
    # at the resolution of the data's own span: coarse buckets would hold a point or two, which
    # draw no line, and the newest of them is not closed yet anyway.
    first = data_since(machine, since, until) if resolution else None
    note = None
    if first is not None and resolution_for(until - first) < resolution:
        span = until - first
        resolution = resolution_for(span)
        note = (
            f"{_duration(span)} of data in this range: drawn from "
            + ("10 s windows" if resolution == 0 else "minute rollups")
            + ", since hour rollups would hold too few points"
        )
    step = step_for(span, resolution or 10)
    gauge = metric.kind == "gauge"
    columns = [f"{metric.name}_{s}" for s in ("min", "mean", "max")] if gauge else [metric.name]

    if scope == "system":
        model = SystemSample if resolution == 0 else SystemRollup
    else:
        model = GpuSample if resolution == 0 else GpuRollup
    time_field = "ts" if resolution == 0 else "bucket"
    qs = model.objects.filter(machine=machine, **window_filter(first if note else since, until, time_field))
    if resolution:
        qs = qs.filter(resolution_s=resolution)
    keys = ["gpu_index"] if scope == "gpu" else []
    lo_col, mean_col, hi_col = columns if gauge else columns * 3  # a counter's one value is all three
    # Downsampled in the database into fixed steps: min of mins, mean of means, max of maxes. A
    # day of minute rollups of 8 GPUs is 11,520 rows; Python gets one per step and device.
    rows = (
        qs.annotate(start=StepStart(time_field, step))
        .values(*keys, "start")
        .annotate(lo=Min(lo_col), mean=Avg(mean_col), hi=Max(hi_col))
        .order_by(*keys, "start")
        .values_list(*keys, "start", "lo", "mean", "hi")
    )
    buckets: dict[int, dict[int, tuple[Any, Any, Any]]] = {}
    for row in rows:
        device = row[0] if keys else -1
        start, values = row[len(keys)], row[len(keys) + 1 :]
        if any(v is not None for v in values):  # a step whose rows hold no value draws no point
            buckets.setdefault(device, {})[start] = values

    accelerators = {a.index: a for a in machine.accelerators.all()} if scope == "gpu" else {}
    series = []
    for device in sorted(buckets):
        points = buckets[device]
        times = sorted(points)
        entry: dict[str, Any] = {
            "device": None if device < 0 else device,
            "name": metric.label if device < 0 else _device_name(accelerators.get(device), device),
            # The point stands at the middle of its step, where its values were measured.
            "t": [(b + step // 2) * 1000 for b in times],
            "mean": [None if points[b][1] is None else round(points[b][1], 6) for b in times],
        }
        if gauge:
            entry["min"] = [points[b][0] for b in times]
            entry["max"] = [points[b][2] for b in times]
        series.append(entry)

    return {
        "machine": machine.name,
        "metric": metric_name,
        "label": metric.label,
        "unit": metric.unit,
        "resolution_s": resolution or None,
        "step_s": step,
        "since": since.isoformat(),
        "until": until.isoformat(),
        # Where the data starts when that is later than ``since`` (charts may start there), and why
        # the resolution is finer than the range alone would give.
        "data_since": first.isoformat() if first is not None and note else None,
        "note": note,
        "series": series,
    }


def data_since(machine: Machine, since: datetime, until: datetime) -> datetime | None:
    """The first raw window of ``machine`` in ``[since, until)``; None when it has none there, or
    when rollups reach further back (raw windows past their retention): then the range is all data."""
    first = (
        SystemSample.objects.filter(machine=machine, **window_filter(since, until))
        .order_by("ts")
        .values_list("ts", flat=True)
        .first()
    )
    if first is None:
        return None
    # Minute rollups outlive raw windows (RETENTION_MINUTE_DAYS > RETENTION_RAW_DAYS).
    older = SystemRollup.objects.filter(
        machine=machine, resolution_s=60, bucket__gte=since, bucket__lt=first - timedelta(minutes=1)
    )
    return None if older.exists() else first


def _duration(span: timedelta) -> str:
    """'32 min', '5 h', '2 d' (rounded down: the data covers at least that)."""
    seconds = int(span.total_seconds())
    if seconds < 3600:
        return f"{max(1, seconds // 60)} min"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"
