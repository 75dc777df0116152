"""Minute and hour rollups, recomputed from the rows below them, only where new rows landed.

``catch_up()`` (every 30 s) finds the machines that received rows since the last run and the span
of window stamps those rows cover, and recomputes just those minute buckets from raw samples: the
work follows the new rows, not the fleet's history. Hour buckets are recomputed from the minutes
when their hour ends (once, with the exact p95 of the hour's raw windows), when a late batch lands
in an hour that is over, and for the hour in progress every ``HOUR_REFRESH`` (so reports and 7-day
charts trail by at most that). Recomputing (rather than adding to) a bucket makes each step
idempotent: running twice gives the same rows, and a late or replayed batch simply gets its
buckets recomputed on the next run.

Some gauges also keep a 95th percentile (``<name>_p95``, models.SYSTEM_P95 / GPU_P95): the p95 of
the raw window means in the bucket, by linear interpolation (``core.stats.percentile``; on
PostgreSQL the same rule computed in SQL by ``percentile_cont``, so no rows travel to Python). An
hour still in progress takes the p95 of its minute means instead; once the hour is over, its
closing pass replaces that with the exact figure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.db.models import Avg, Max, Min, Sum
from django.db.models.functions import TruncHour, TruncMinute
from django.utils import timezone

from dashboard.core.periods import window_filter
from dashboard.core.stats import P95, percentile
from hwprobe.schema import GPU_METRICS, SYSTEM_METRICS, Metric

from .models import (
    GPU_P95,
    SYSTEM_P95,
    GpuRollup,
    GpuSample,
    RollupState,
    SystemRollup,
    SystemSample,
    metric_columns,
)

UTC = UTC
MINUTE, HOUR = 60, 3600
# Rows committed late by a slow transaction still carry a received_at before the watermark;
# looking this far back catches them (an ingest transaction lasts milliseconds to seconds; buckets
# are recomputed, so the overlap costs only the recomputation of those few buckets).
MARGIN = timedelta(seconds=30)
MACHINES_PER_QUERY = 500
# The hour in progress is refreshed from its minutes this often (a full pass over them).
HOUR_REFRESH = timedelta(minutes=5)
# A machine whose new rows reach further back than this (a spool replayed after an outage) is
# rolled up on its own, so its old range does not widen everyone else's.
LATE = timedelta(minutes=10)
# Bucket key: (machine_id, [gpu_index,] bucket start in epoch seconds).
Key = tuple[int, ...]


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


def floor_to(t: datetime, seconds: int) -> datetime:
    epoch = int(t.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=UTC)


def _rollup(
    source,
    target,
    metrics,
    time_field,
    trunc,
    resolution,
    keys,
    machine_ids,
    lo,
    hi,
    p95: Callable[[Key, int], dict[str, float | None]] | None = None,
    p95_columns: Iterable[str] = (),
) -> int:
    """Recompute ``target`` buckets of ``resolution`` in [lo, hi) for these machines from ``source``.

    ``p95(key, count)`` gives the percentile columns of the bucket ``key`` holding ``count`` snapshots.
    """
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
    p95_columns = [f"{name}_p95" for name in p95_columns]
    for row in rows:
        fields = {c: row[c] for c in columns}
        if p95 is not None:
            fields.update(
                p95((row["machine_id"], *(row[k] for k in keys), int(row["b"].timestamp())), row["count"] or 0)
            )
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
        objs,
        batch_size=500,
        update_conflicts=True,
        unique_fields=unique,
        update_fields=["count", *columns, *p95_columns],
    )
    return len(objs)


def _sql_p95s(table: str, time_field: str, keys, names, machine_ids, lo, hi, unit: str, extra: str = "") -> list:
    """PostgreSQL: per (machine, [device,] ``unit`` bucket) in [lo, hi), snapshots and the p95 of each column."""
    qn = connection.ops.quote_name
    cols = ", ".join(f"percentile_cont({P95}) WITHIN GROUP (ORDER BY {qn(n)})" for n in names)
    key_cols = ", ".join(qn(c) for c in ("machine_id", *keys))
    bucket = f"extract(epoch from date_trunc('{unit}', {qn(time_field)}))::bigint"
    count = "sum(count)" if unit == "hour" and time_field == "ts" else "0"
    sql = (
        f"SELECT {key_cols}, {bucket}, {count}, {cols} FROM {qn(table)} "
        f"WHERE machine_id = ANY(%s) AND {qn(time_field)} >= %s AND {qn(time_field)} < %s {extra} "
        f"GROUP BY {key_cols}, {bucket}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [list(machine_ids), lo, hi])
        return cursor.fetchall()


def _buckets_sql(source, target, metrics, names, keys, machine_ids, lo, hi, resolution: int = MINUTE) -> int:
    """PostgreSQL: the ``resolution`` buckets in [lo, hi) of these machines, aggregated and upserted
    in SQL from raw windows (minutes) or from minute buckets (hours); the p95 columns take the p95
    of the rows' means."""
    if lo >= hi:
        return 0
    qn = connection.ops.quote_name
    time_field = "ts" if resolution == MINUTE else "bucket"
    unit = "minute" if resolution == MINUTE else "hour"
    minute = f"date_trunc('{unit}', {time_field} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    only = "" if resolution == MINUTE else f"AND resolution_s = {MINUTE} "
    columns, exprs = [], []
    for metric in metrics:
        for column in metric_columns(metric):
            columns.append(column)
            fn = (
                {"min": "min", "mean": "avg"}.get(column.rsplit("_", 1)[-1], "max") if metric.kind == "gauge" else "max"
            )
            exprs.append(f"{fn}({qn(column)})")
    p95s = [f"{n}_p95" for n in names]
    exprs += [f"percentile_cont({P95}) WITHIN GROUP (ORDER BY {qn(n + '_mean')})" for n in names]
    key_cols = ", ".join(qn(c) for c in ("machine_id", *keys))
    written = ", ".join(qn(c) for c in (*columns, *p95s))
    sql = (
        f"INSERT INTO {qn(target._meta.db_table)} ({key_cols}, resolution_s, bucket, count, {written}) "
        f"SELECT {key_cols}, {resolution}, {minute}, sum(count), {', '.join(exprs)} FROM {qn(source._meta.db_table)} "
        f"WHERE machine_id = ANY(%s) AND {time_field} >= %s AND {time_field} < %s {only}GROUP BY {key_cols}, {minute} "
        f"ON CONFLICT ({key_cols}, resolution_s, bucket) DO UPDATE SET count = excluded.count, "
        + ", ".join(f"{qn(c)} = excluded.{qn(c)}" for c in (*columns, *p95s))
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [list(machine_ids), lo, hi])
        return cursor.rowcount


def _raw_p95s(
    source, keys, names, machine_ids, lo, hi, minutes: bool = True
) -> tuple[dict[Key, dict], dict[Key, tuple[int, dict]]]:
    """The p95 of raw window means per minute and per hour bucket in [lo, hi).

    Returns ``{minute key: {column: p95}}`` and ``{hour key: (snapshots, {column: p95})}``; the
    snapshot count says whether the hour's raw windows are all still there. Rows stream in
    (machine, device, time) order and each hour is reduced as soon as it is complete, so a long
    catch-up never holds more than one hour of one device in memory.
    """
    if connection.vendor == "postgresql":
        means = [f"{n}_mean" for n in names]
        table, n_key = source._meta.db_table, 1 + len(keys)
        if lo >= hi:
            return {}, {}
        by_minute = {
            tuple(r[: n_key + 1]): dict(zip((f"{n}_p95" for n in names), r[n_key + 2 :], strict=True))
            for r in (_sql_p95s(table, "ts", keys, means, machine_ids, lo, hi, "minute") if minutes else [])
        }
        hours = {
            tuple(r[: n_key + 1]): (r[n_key + 1], dict(zip((f"{n}_p95" for n in names), r[n_key + 2 :], strict=True)))
            for r in _sql_p95s(table, "ts", keys, means, machine_ids, lo, hi, "hour")
        }
        return by_minute, hours
    rows = (
        source.objects.filter(machine_id__in=machine_ids, **window_filter(lo, hi))
        .order_by("machine_id", *keys, "ts")
        .values_list("machine_id", *keys, "ts", "count", *(f"{n}_mean" for n in names))
        .iterator(chunk_size=5000)
    )
    minutes: dict[Key, dict] = {}
    hours: dict[Key, tuple[int, dict]] = {}
    n_key = 1 + len(keys)
    current: Key | None = None
    snapshots = 0
    hour_values: list[list[float]] = []
    minute_values: dict[int, list[list[float]]] = {}

    def flush() -> None:
        if current is None:
            return
        hours[current] = (snapshots, {f"{n}_p95": percentile(v, P95) for n, v in zip(names, hour_values, strict=False)})
        for minute, values in minute_values.items():
            minutes[(*current[:-1], minute)] = {
                f"{n}_p95": percentile(v, P95) for n, v in zip(names, values, strict=False)
            }

    for row in rows:
        epoch = int(row[n_key].timestamp())
        key = (*row[:n_key], epoch - epoch % HOUR)
        if key != current:
            flush()
            current, snapshots = key, 0
            hour_values, minute_values = [[] for _ in names], {}
        snapshots += row[n_key + 1]
        per_minute = minute_values.setdefault(epoch - epoch % MINUTE, [[] for _ in names])
        for i, value in enumerate(row[n_key + 2 :]):
            if value is not None:
                hour_values[i].append(value)
                per_minute[i].append(value)
    flush()
    return minutes, hours


def _minute_mean_p95s(target, keys, names, machine_ids, lo, hi) -> dict[Key, dict]:
    """Per hour bucket in [lo, hi): the p95 of its minute means (for hours still in progress)."""
    if connection.vendor == "postgresql":
        n_key = 1 + len(keys)
        rows = _sql_p95s(
            target._meta.db_table,
            "bucket",
            keys,
            [f"{n}_mean" for n in names],
            machine_ids,
            lo,
            hi,
            "hour",
            extra=f"AND resolution_s = {MINUTE}",
        )
        return {
            tuple(r[: n_key + 1]): dict(zip((f"{n}_p95" for n in names), r[n_key + 2 :], strict=True)) for r in rows
        }
    rows = target.objects.filter(
        machine_id__in=machine_ids, resolution_s=MINUTE, **window_filter(lo, hi, "bucket")
    ).values_list("machine_id", *keys, "bucket", *(f"{n}_mean" for n in names))
    values: dict[Key, list[list[float]]] = defaultdict(lambda: [[] for _ in names])
    n_key = 1 + len(keys)
    for row in rows:
        epoch = int(row[n_key].timestamp())
        lists = values[(*row[:n_key], epoch - epoch % HOUR)]
        for i, value in enumerate(row[n_key + 1 :]):
            if value is not None:
                lists[i].append(value)
    return {
        key: {f"{n}_p95": percentile(v, P95) for n, v in zip(names, lists, strict=False)}
        for key, lists in values.items()
    }


def _stored_p95s(target, keys, names, machine_ids, lo, hi) -> dict[Key, dict]:
    rows = target.objects.filter(
        machine_id__in=machine_ids, resolution_s=HOUR, **window_filter(lo, hi, "bucket")
    ).values_list("machine_id", *keys, "bucket", *(f"{n}_p95" for n in names))
    n_key = 1 + len(keys)
    return {
        (*row[:n_key], int(row[n_key].timestamp())): dict(
            zip((f"{n}_p95" for n in names), row[n_key + 1 :], strict=False)
        )
        for row in rows
    }


def _rollup_scope(source, target, metrics, names, keys, machine_ids, m_lo, m_hi, h_lo, h_hi, now, hours) -> int:
    """Minute then (if ``hours``) hour buckets of one scope (system or GPU), with their p95 columns."""
    ended = min(h_hi, floor_to(now, HOUR))  # hours before this are over
    empty = {f"{n}_p95": None for n in names}
    if connection.vendor == "postgresql":
        # One INSERT ... SELECT ... ON CONFLICT per scope: the minutes never travel to Python.
        written = _buckets_sql(source, target, metrics, names, keys, machine_ids, m_lo, m_hi)
        hour_p95 = _raw_p95s(source, keys, names, machine_ids, h_lo, ended, minutes=False)[1] if hours else {}
    else:
        read_lo = min(m_lo, h_lo) if hours and ended > h_lo else m_lo
        read_hi = max(m_hi, ended) if hours else m_hi
        minute_p95, hour_p95 = _raw_p95s(source, keys, names, machine_ids, read_lo, read_hi)
        written = _rollup(
            source,
            target,
            metrics,
            "ts",
            TruncMinute,
            MINUTE,
            keys,
            machine_ids,
            m_lo,
            m_hi,
            lambda key, count: minute_p95.get(key, empty),
            names,
        )
    if not hours:
        return written

    provisional = _minute_mean_p95s(target, keys, names, machine_ids, h_lo, h_hi)
    stored: dict[Key, dict] | None = None

    def hour(key: Key, count: int) -> dict:
        nonlocal stored
        if key[-1] >= ended.timestamp():
            return provisional.get(key, empty)
        snapshots, values = hour_p95.get(key, (0, None))
        if values is not None and snapshots >= count:
            return values
        # Some of the hour's raw windows are gone (past retention): keep what was computed while
        # they were there.
        if stored is None:
            stored = _stored_p95s(target, keys, names, machine_ids, h_lo, h_hi)
        kept = stored.get(key)
        return kept if kept and any(v is not None for v in kept.values()) else provisional.get(key, empty)

    if connection.vendor == "postgresql" and ended < h_hi:
        # The hour in progress (refreshed every HOUR_REFRESH for the whole fleet) in SQL, from its
        # minutes, p95 of their means; hours that are over keep the exact rules below.
        written += _buckets_sql(target, target, metrics, names, keys, machine_ids, max(h_lo, ended), h_hi, HOUR)
        h_hi = ended
    if h_lo < h_hi:
        written += _rollup(
            target, target, metrics, "bucket", TruncHour, HOUR, keys, machine_ids, h_lo, h_hi, hour, names
        )
    return written


def rollup_range(
    machine_ids: list[int],
    lo: datetime,
    hi: datetime,
    now: datetime | None = None,
    hours: bool = True,
    minutes: bool = True,
) -> int:
    """Recompute the minute buckets (if ``minutes``) and hour buckets (if ``hours``) covering
    [lo, hi] for these machines; return rows written."""
    now = now or timezone.now()
    m_lo, m_hi = floor_to(lo, MINUTE), floor_to(hi, MINUTE) + timedelta(seconds=MINUTE)
    if not minutes:
        m_hi = m_lo  # an empty range: no minute is recomputed
    h_lo, h_hi = floor_to(lo, HOUR), floor_to(hi, HOUR) + timedelta(seconds=HOUR)
    written = 0
    with transaction.atomic():
        for scope in (
            (SystemSample, SystemRollup, SYSTEM_METRICS, SYSTEM_P95, []),
            (GpuSample, GpuRollup, GPU_METRICS, GPU_P95, ["gpu_index"]),
        ):
            written += _rollup_scope(*scope, machine_ids, m_lo, m_hi, h_lo, h_hi, now, hours)
        if m_lo < m_hi:
            gpu_means(machine_ids, MINUTE, m_lo, m_hi)
        if hours:
            gpu_means(machine_ids, HOUR, h_lo, h_hi)
    return written


def gpu_means(machine_ids: list[int], resolution: int, lo: datetime, hi: datetime) -> int:
    """Write onto these machines' system rollups of ``resolution`` in [lo, hi) the mean over the
    machine's GPUs of their ``util_percent_mean`` in the same bucket (``SystemRollup.gpu_util_percent_mean``;
    NULL without GPU rollups), from the GPU rollups just written; returns the rows updated.

    The fleet page's sparklines read it: averaging 8 GPU rows per machine and minute at request
    time was most of the page's SQL (60 machines x 60 minutes x 8 GPUs = 28,800 rows). One UPDATE
    on PostgreSQL and SQLite, each row's mean a probe of the GPU rollups' unique index: a join of
    the two tables instead could be planned as a nested loop of scans when statistics are stale
    (it ran for minutes on freshly loaded tables)."""
    if not machine_ids or lo >= hi:
        return 0
    qn = connection.ops.quote_name
    system, gpu = qn(SystemRollup._meta.db_table), qn(GpuRollup._meta.db_table)
    sql = (
        f"UPDATE {system} SET gpu_util_percent_mean = (SELECT AVG(g.util_percent_mean) FROM {gpu} g "
        f"WHERE g.machine_id = {system}.machine_id AND g.resolution_s = {system}.resolution_s "
        f"AND g.bucket = {system}.bucket) WHERE machine_id IN ({', '.join(['%s'] * len(machine_ids))}) "
        "AND resolution_s = %s AND bucket >= %s AND bucket < %s"
    )
    bounds = [connection.ops.adapt_datetimefield_value(t) for t in (lo, hi)]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*machine_ids, resolution, *bounds])
        return cursor.rowcount


def _mark(name: str) -> datetime | None:
    state = RollupState.objects.filter(name=name).first()
    return state.watermark if state else None


def _set_mark(name: str, when: datetime) -> None:
    RollupState.objects.update_or_create(name=name, defaults={"watermark": when})


def catch_up(now: datetime | None = None) -> int:
    """Roll up what was received since the last run; safe to run twice or concurrently."""
    now = now or timezone.now()
    watermark = _mark("rollup")
    since = (watermark - MARGIN) if watermark else datetime(2000, 1, 1, tzinfo=UTC)
    this_hour = floor_to(now, HOUR)
    written = 0

    # Hours that ended since the last run: their final figures (exact p95), once, for every
    # machine with minutes in them.
    closed = _mark("rollup-hours-closed")
    if closed is not None and closed < this_hour:
        ids = list(
            SystemRollup.objects.filter(resolution_s=MINUTE, **window_filter(closed, this_hour, "bucket"))
            .values_list("machine_id", flat=True)
            .distinct()
            .order_by("machine_id")
        )
        for start in range(0, len(ids), MACHINES_PER_QUERY):
            last = this_hour - timedelta(microseconds=1)
            written += rollup_range(ids[start : start + MACHINES_PER_QUERY], closed, last, now, minutes=False)

    refreshed = _mark("rollup-hours")
    refresh = refreshed is None or now - refreshed >= HOUR_REFRESH
    touched = list(
        SystemSample.objects.filter(received_at__gte=since, received_at__lt=now)
        .values("machine_id")
        .annotate(lo=Min("ts"), hi=Max("ts"))
        .order_by("machine_id")
    )
    late = [r for r in touched if r["lo"] < now - LATE]
    recent = [r for r in touched if r["lo"] >= now - LATE]
    chunks = [[r] for r in late] + [
        recent[start : start + MACHINES_PER_QUERY] for start in range(0, len(recent), MACHINES_PER_QUERY)
    ]
    for chunk in chunks:
        lo = min(r["lo"] for r in chunk)
        hi = max(r["hi"] for r in chunk)
        # Minutes always; hours when due, or when new rows fall in an hour that is over.
        hours = refresh or lo < this_hour
        written += rollup_range([r["machine_id"] for r in chunk], lo, hi, now, hours=hours)
    _set_mark("rollup", now)
    _set_mark("rollup-hours-closed", this_hour)
    if refresh:
        _set_mark("rollup-hours", now)
    return written
