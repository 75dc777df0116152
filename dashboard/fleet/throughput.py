"""Tokens per second, from the token counts that ride in agent windows (ThroughputSample).

Rates are taken over the time the job was producing: each count arrives with the seconds of work
behind it (``active_s``: from the job's own progress timestamps, the times between scrapes or
between report calls), so a window the job filled for 3 of its 10 s counts 3 s, not 10. Rows from
older agents have no ``active_s`` and count their whole window. A chart step's rate is the tokens
of the windows ending in it over the step's length, so areas under the chart are token totals; a
job's chart over a short span uses the counts at the resolution they were measured (``points``,
about 1 s) while the rows still have them (``RETENTION_RAW_DAYS``), its windows after that.
Tokens per joule divide tokens by the energy the GPUs drew over the same windows.

Several sources may count the same job's tokens in one window (its output and its engine's
metrics): per window and job the source that counted most is kept, with its active time
(``window_tokens``), and every figure here, in reports and in RoI is built on that one rule.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import reduce
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connection
from django.db.models import Case, F, Max, Q, QuerySet, Sum, When

from dashboard.core.periods import StepStart, step_start_sql, window_filter

from .models import GpuSample, Machine, ThroughputRollup, ThroughputSample
from .series import resolution_for, step_for
from .visibility import only

KINDS = {"prompt": "prompt_tokens", "generated": "generated_tokens", "train": "train_tokens"}
METRICS = {f"tokens.{k}": k for k in KINDS}
LABELS = {"prompt": "Prompt tokens", "generated": "Generated tokens", "train": "Training tokens"}
FINE_MAX_SPAN_S = 2 * 3600  # a span up to 2 h is drawn at the measured resolution (about 1 s)


@dataclass
class WindowTokens:
    """Tokens of one job (``job_key``, 0 outside jobs) in one agent window, best source per kind."""

    machine_id: int
    seq: int
    job_key: int
    ts: datetime  # end of the window
    interval_s: float
    prompt: int
    generated: int
    train: int
    # Seconds of work behind each kind's count (its source's active_s; the window when unknown).
    active_s: dict[str, float] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return getattr(self, kind)

    def seconds(self, kind: str) -> float:
        return self.active_s.get(kind) or self.interval_s


_ROW_FIELDS = (
    "machine_id",
    "seq",
    "job_key",
    "ts",
    "interval_s",
    "prompt_tokens",
    "generated_tokens",
    "train_tokens",
    "active_s",
)


def window_tokens(rows: QuerySet[ThroughputSample]) -> list[WindowTokens]:
    """Per window and job among ``rows``: for each kind the count of the source that counted most,
    with that source's active seconds."""
    best: dict[tuple[int, int, int], WindowTokens] = {}
    for machine_id, seq, job_key, ts, interval_s, *counts, active_s in rows.order_by().values_list(*_ROW_FIELDS):
        key = (machine_id, seq, job_key)
        window = best.get(key)
        if window is None:
            window = best[key] = WindowTokens(machine_id, seq, job_key, ts, interval_s, 0, 0, 0)
        for kind, n in zip(KINDS, counts, strict=True):
            if n and n > window.count(kind):
                setattr(window, kind, n)
                window.active_s[kind] = active_s or interval_s
    return list(best.values())


def machine_rows(machine: Machine, since: datetime, until: datetime) -> QuerySet[ThroughputSample]:
    """The machine's token rows stamped in ``[since, until)``."""
    return ThroughputSample.objects.filter(machine=machine, **window_filter(since, until))


def points_of(
    row: tuple[datetime, float, float | None, list | None, int], kind: str
) -> list[tuple[float, float, float]]:
    """(end as Unix s, active s, tokens of ``kind``) at the resolution a row was measured: its
    points, or the whole window as one point when it has none."""
    ts, interval_s, active_s, points, count = row
    if points:
        index = 2 + list(KINDS).index(kind)
        return [(p[0], p[1], p[index]) for p in points if p[index]]
    return [(ts.timestamp(), active_s or interval_s, count)] if count else []


def fine_series(
    rows: QuerySet[ThroughputSample], metric: str, since: datetime, until: datetime, name: str
) -> dict[str, Any] | None:
    """One series at the resolution the counts were measured (about a second), for spans short
    enough to draw point by point; None for longer spans (use the windows)."""
    if (until - since).total_seconds() > FINE_MAX_SPAN_S:
        return None
    kind = METRICS[metric]
    column = KINDS[kind]
    # Per window and job the row of the source that counted most (``window_tokens``' rule); on a
    # tie the first source by name, so the drawing does not change between refreshes.
    best: dict[tuple[int, int, int], tuple] = {}
    fields = ("machine_id", "seq", "job_key", "ts", "interval_s", "active_s", "points", column)
    for machine_id, seq, job_key, *row in rows.filter(**{f"{column}__gt": 0}).order_by("source").values_list(*fields):
        key = (machine_id, seq, job_key)
        if key not in best or row[-1] > best[key][-1]:
            best[key] = tuple(row)
    measured: list[tuple[float, float, float]] = []
    for row in best.values():
        measured.extend(points_of(row, kind))  # type: ignore[arg-type]
    measured.sort()
    t = [round(end * 1000) for end, _, _ in measured]
    mean = [round(n / active, 3) if active > 0 else None for _, active, n in measured]
    gaps = sorted(b - a for a, b in zip(t, t[1:], strict=False))
    resolution_s = gaps[len(gaps) // 2] / 1000 if gaps else None
    series = [{"key": None, "name": name, "t": t, "mean": mean}] if t else []
    # step_s tells the chart how far apart points may be before the line drops to zero between
    # them: twice the usual spacing, so a late progress line is not drawn as an idle gap.
    step = max(2, math.ceil(2 * resolution_s)) if resolution_s else 2
    data = payload(metric, since, until, series, step)
    data["resolution_s"] = resolution_s
    return data


def totals(windows: Iterable[WindowTokens]) -> dict[str, int]:
    """Tokens by kind over ``windows``."""
    out = {"prompt": 0, "generated": 0, "train": 0}
    for w in windows:
        out["prompt"] += w.prompt
        out["generated"] += w.generated
        out["train"] += w.train
    return out


def payload(metric: str, since: datetime, until: datetime, series: list, step: int, **extra) -> dict[str, Any]:
    """The JSON a tokens/s chart draws (the same shape as the gauge series)."""
    kind = METRICS[metric]
    return {
        "metric": metric,
        "label": f"{LABELS[kind]} per second",
        "unit": "tokens/s",
        "resolution_s": None,
        "step_s": step,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "series": series,
        **extra,
    }


def step_sums(
    rows: QuerySet[ThroughputSample], columns: Sequence[str], step: int, by: str | Sequence[str]
) -> list[tuple[int, ...]]:
    """``(by, step start in epoch s, *tokens)``, a sum per column of ``columns``, among ``rows``
    that counted any, sorted, with ``window_tokens``' rule: per window, job and column the count of
    the source that counted most (the job's output and its engine's metrics often both count a
    window). ``by``: a column or several (``machine_id``, ``job_key``), each leading the tuples.

    Summed in the database: an hour of a 1,000-machine fleet is 360,000 windows, and Python would
    read each one (bench/README.md, "Fleet charts at 1,000 machines")."""
    counted = reduce(operator.or_, (Q(**{f"{c}__gt": 0}) for c in columns))
    per_window = (
        rows.filter(counted)
        .order_by()
        .values("machine_id", "seq", "job_key", "ts")  # a window's rows share its end
        .annotate(**{f"best_{i}": Max(c) for i, c in enumerate(columns)})
    )
    sql, params = per_window.query.sql_with_params()
    keys = [by] if isinstance(by, str) else list(by)
    cols = ", ".join(f"w.{connection.ops.quote_name(k)}" for k in keys)
    start = step_start_sql("w.ts", step, connection.vendor)
    sums = ", ".join(f"SUM(w.best_{i})" for i in range(len(columns)))
    groups = ", ".join(str(i) for i in range(1, len(keys) + 2))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {cols}, {start}, {sums} FROM ({sql}) w GROUP BY {groups} ORDER BY {groups}", params)
        n = len(keys)
        return [(*row[:n], int(row[n]), *(int(v) for v in row[n + 1 :])) for row in cursor.fetchall()]


def rebuild_rollups(machine_ids: Collection[int]) -> int:
    """Recompute these machines' token rollups from their token rows; returns the rows written.

    Ingest keeps the rollups as it stores windows; this is for rows written another way (an
    import, a test's seed). The same rule and buckets as ingest's, summed by ``step_sums``."""
    ids = list(machine_ids)
    ThroughputRollup.objects.filter(machine_id__in=ids).delete()
    rows = ThroughputSample.objects.filter(machine_id__in=ids)
    rollups = [
        ThroughputRollup(
            machine_id=machine_id,
            job_key=job_key,
            resolution_s=resolution,
            bucket=datetime.fromtimestamp(start, tz=UTC),
            prompt_tokens=prompt,
            generated_tokens=generated,
            train_tokens=train,
        )
        for resolution in ThroughputRollup.RESOLUTIONS
        for machine_id, job_key, start, prompt, generated, train in step_sums(
            rows, list(KINDS.values()), resolution, ("machine_id", "job_key")
        )
    ]
    ThroughputRollup.objects.bulk_create(rollups, batch_size=1000)
    return len(rollups)


def chart_sums(
    raw: QuerySet[ThroughputSample],
    rolled: QuerySet[ThroughputRollup],
    column: str,
    since: datetime,
    until: datetime,
    by: str,
    finest: int = 0,
) -> tuple[list[tuple[int, ...]], int]:
    """A token chart's ``(by, step start, tokens)`` over ``[since, until)`` and its step: from the
    windows (``raw``) up to ``series.RAW_MAX``, beyond from minute or hour rollups (``rolled``),
    which hold each window once already, as the gauge charts choose (``series.resolution_for``);
    never finer than ``finest`` seconds (60: minute rollups even for an hour). From rollups, only
    the steps wholly inside the range."""
    resolution, step = chart_step(since, until, finest)
    if not resolution:
        return step_sums(raw.filter(**window_filter(since, until)), [column], step, by), step
    rows = (
        whole_steps(rolled, column, resolution, step, since, until)
        .values(by, "step_start")
        .annotate(tokens=Sum(column))
        .order_by(by, "step_start")
        .values_list(by, "step_start", "tokens")
    )
    return [(key, int(start), int(n)) for key, start, n in rows], step


def chart_step(since: datetime, until: datetime, finest: int = 0) -> tuple[int, int]:
    """A token chart's rollup resolution (0: windows) and step for ``[since, until)``."""
    resolution = max(resolution_for(until - since), finest)
    return resolution, step_for(until - since, resolution or 10)


def whole_steps(
    rolled: QuerySet[ThroughputRollup], column: str, resolution: int, step: int, since: datetime, until: datetime
) -> QuerySet[ThroughputRollup]:
    """The rollups with tokens of ``column`` in the ``step``-second steps wholly inside
    ``[since, until)``, each annotated with its ``step_start``. Only whole steps: the step still
    filling (a minute holding 20 s of windows so far) would draw as a dip in the rate at the
    chart's end, a step cut by ``since`` as one at its start. Steps start at multiples of ``step``
    from the epoch (``StepStart``), and ``step`` is a multiple of ``resolution``, so the steps'
    edges are buckets' edges."""
    first = datetime.fromtimestamp(math.ceil(since.timestamp() / step) * step, UTC)
    end = datetime.fromtimestamp(math.floor(until.timestamp() / step) * step, UTC)
    return rolled.filter(
        resolution_s=resolution, **window_filter(first, end, "bucket"), **{f"{column}__gt": 0}
    ).annotate(step_start=StepStart("bucket", step))


def series_from_sums(sums: Iterable[tuple[Any, ...]], step: int, key_name: Callable[[Any], str]) -> list[dict]:
    """One series per key of tokens/s per step from ``step_sums`` (keys in their given order)."""
    buckets: dict[Any, dict[int, int]] = {}
    for key, start, tokens in sums:
        per_step = buckets.setdefault(key, {})
        per_step[start] = per_step.get(start, 0) + tokens
    series = []
    for key, per_step in buckets.items():
        times = sorted(per_step)
        series.append(
            {
                "key": key,
                "name": key_name(key),
                "t": [(b + step // 2) * 1000 for b in times],
                "mean": [round(per_step[b] / step, 3) for b in times],
            }
        )
    return series


def machine_series(
    machine: Machine, metric: str, since: datetime, until: datetime, job_names: dict[int, str] | None = None
) -> dict[str, Any]:
    """tokens/s on one machine, one series per job (stacked in the chart); unattributed last.

    ``job_names`` maps the ids of jobs that really ran on this machine to their labels (the jobs
    app knows them); tokens reported under any other id count as outside jobs.
    """
    column = KINDS[METRICS[metric]]
    names = job_names or {}
    sums, step = chart_sums(
        ThroughputSample.objects.filter(machine=machine),
        ThroughputRollup.objects.filter(machine=machine),
        column,
        since,
        until,
        "job_key",
    )
    flat = sorted(((key if key in names else None, start, n) for key, start, n in sums), key=lambda r: r[0] is None)
    series = series_from_sums(flat, step, lambda j: names[j] if j else "outside jobs")
    for s in series:
        s["job"] = s.pop("key")
    return payload(metric, since, until, series, step, machine=machine.name)


FLEET_TOP = 10  # machines drawn on their own in the fleet's chart; the rest are summed into one


def fleet_series(
    metric: str, since: datetime, until: datetime, machine_ids: Collection[int] | None = None, top: int = FLEET_TOP
) -> dict[str, Any]:
    """The fleet's tokens/s (stacked, so the top is the total) for the machines of
    ``machine_ids`` (None: every machine): the ``top`` machines with the most tokens in the range
    one series each, by name, and the others summed into one series, last (``machine`` None).

    A chart of a thousand stacked machines cannot be read and its JSON was megabytes; the
    machine page has each machine's own chart."""
    column = KINDS[METRICS[metric]]
    # Minutes at the finest: an hour of 1,000 machines is 360,000 windows but 60,000 minute rows
    # (ingest writes them with the windows, so the newest minute is there too).
    resolution, step = chart_step(since, until, finest=60)
    rows = whole_steps(only(ThroughputRollup.objects.all(), machine_ids), column, resolution, step, since, until)
    # Ranked, then folded into the top and the rest, in SQL: a day of 1,000 machines in 5-minute
    # steps is 288,000 sums, and reaching Python took most of the chart's second; ~3,000 now. (One
    # statement ranking a materialised CTE of the sums was slower for 1 h and 3 h: bench/README.md.)
    totals = rows.values("machine_id").annotate(n=Sum(column)).order_by("-n", "machine_id")
    ranked = list(totals.values_list("machine_id", flat=True))
    shown = dict(Machine.objects.filter(pk__in=ranked[:top]).values_list("pk", "name"))
    others = len(ranked) - len(shown)
    sums = (
        rows.annotate(shown=Case(When(machine_id__in=list(shown), then=F("machine_id")), default=None))
        .values("shown", "step_start")
        .annotate(tokens=Sum(column))
        .order_by()
        .values_list("shown", "step_start", "tokens")
    )
    flat = sorted(
        ((shown.get(m), int(start), int(n)) for m, start, n in sums), key=lambda r: (r[0] is None, r[0] or "", r[1])
    )
    series = series_from_sums(flat, step, lambda name: name or f"{others} other machine{'s' if others != 1 else ''}")
    for s in series:
        s["machine"] = s.pop("key")
    return payload(metric, since, until, series, step, machines=len(ranked), top=top)


def energy_joules(
    machine_id: int, gpus: list[int] | None, since: datetime | None, until: datetime | None
) -> float | None:
    """GPU energy over raw windows in ``[since, until)``: sum of mean power x window length; None
    without a power reading."""
    qs = GpuSample.objects.filter(machine_id=machine_id, power_watts_mean__isnull=False)
    if gpus is not None:
        qs = qs.filter(gpu_index__in=gpus)
    if since or until:  # an open end reaches as far as the data
        qs = qs.filter(
            **window_filter(since or datetime.min.replace(tzinfo=UTC), until or datetime.max.replace(tzinfo=UTC))
        )
    joules = qs.aggregate(j=Sum(F("power_watts_mean") * F("interval_s")))["j"]
    return float(joules) if joules else None


def summaries(rows: QuerySet[ThroughputSample], by: str) -> dict[int, dict[str, Any]]:
    """Per value of ``by`` (``job_key`` or ``machine_id``) among ``rows``, per kind: total tokens;
    mean tokens/s (all tokens over the seconds spent producing them), median and peak of the
    windows' rates over their active seconds; active seconds. Each window with ``window_tokens``'
    rule: per job the count of the source that counted most, with that source's active seconds
    (the window's length when it gave none; the longest of them when sources tie). Jobs sharing a
    window add their counts and count the longest of their active times (they ran side by side).

    In the database: the jobs list's fifty serving jobs of a day are 432,000 windows, which took
    6.5 s to read into Python (bench/README.md); the answer is a row per group and kind."""
    if by not in ("job_key", "machine_id"):
        raise ValueError(f"by: {by!r}")
    try:
        sql, params = (
            rows.order_by()
            .values("machine_id", "seq", "job_key", "interval_s", "active_s", *KINDS.values())
            .query.sql_with_params()
        )
    except EmptyResultSet:  # rows of no job (an empty page of the jobs list)
        return {}
    secs = "COALESCE(NULLIF(r.active_s, 0), r.interval_s)"
    # A window of a job is (machine, seq, job); in ``by``'s order first, so that the sort the window
    # function needs also serves the grouping by ``by`` after it (one sort of the rows, not two).
    window = "job_key, machine_id, seq" if by == "job_key" else "machine_id, seq, job_key"
    best = ", ".join(f"MAX(r.{c}) OVER (PARTITION BY {window}) AS best_{k}" for k, c in KINDS.items())
    per_job = ", ".join(
        f"MAX(b.{c}) AS c_{k}, MAX(CASE WHEN b.{c} = b.best_{k} AND b.{c} > 0 THEN b.secs END) AS s_{k}"
        for k, c in KINDS.items()
    )
    windows = (
        f"WITH b AS (SELECT r.*, {secs} AS secs, {best} FROM ({sql}) r), "
        f"w AS (SELECT {window}, {per_job} FROM b GROUP BY {window}), "
    )
    if by == "job_key":  # a job's windows are its (machine, seq) already
        windows += "windows AS (SELECT job_key AS g, " + ", ".join(f"c_{k}, s_{k}" for k in KINDS) + " FROM w) "
    else:  # a machine's window adds its jobs' counts over the longest of their times
        per_window = ", ".join(f"SUM(c_{k}) AS c_{k}, MAX(CASE WHEN c_{k} > 0 THEN s_{k} END) AS s_{k}" for k in KINDS)
        windows += f"windows AS (SELECT machine_id AS g, {per_window} FROM w GROUP BY machine_id, seq) "

    # A window's rate of a kind: its count over its seconds, NULL where it counted none.
    def counted(k: str) -> str:
        return f"c_{k} > 0 AND s_{k} > 0"

    def rate(k: str) -> str:
        return f"CASE WHEN {counted(k)} THEN (c_{k} + 0.0) / s_{k} END"

    if connection.vendor == "postgresql":
        # One pass per group: the aggregates skip the NULL rates, percentile_cont(0.5) is
        # statistics.median's middle value or the mean of the middle two.
        figures = ", ".join(
            f"SUM(CASE WHEN {counted(k)} THEN c_{k} END), SUM(CASE WHEN {counted(k)} THEN s_{k} END), "
            f"MAX({rate(k)}), percentile_cont(0.5) WITHIN GROUP (ORDER BY {rate(k)})"
            for k in KINDS
        )
        query = windows + f"SELECT g, {figures} FROM windows GROUP BY g"
    else:
        # SQLite has no percentile: the rates of each group and kind numbered in order, then the
        # middle one, or the mean of the middle two.
        unpivot = " UNION ALL ".join(
            f"SELECT g, '{k}' AS kind, c_{k} AS c, s_{k} AS s, {rate(k)} AS rate FROM windows WHERE {counted(k)}"
            for k in KINDS
        )
        query = windows + (
            f", ranked AS (SELECT g, kind, c, s, rate, ROW_NUMBER() OVER (PARTITION BY g, kind ORDER BY rate) AS rn, "
            f"COUNT(*) OVER (PARTITION BY g, kind) AS n FROM ({unpivot}) u) "
            "SELECT g, kind, SUM(c), SUM(s), MAX(rate), AVG(CASE WHEN rn IN ((n + 1) / 2, (n + 2) / 2) THEN rate END) "
            "FROM ranked GROUP BY g, kind"
        )
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        found = cursor.fetchall()
    if connection.vendor == "postgresql":  # a row per group with four figures per kind, as SQLite's rows
        found = [(row[0], kind, *row[1 + 4 * i : 5 + 4 * i]) for row in found for i, kind in enumerate(KINDS)]
    out: dict[int, dict[str, Any]] = {}
    for g, kind, total, active, peak, median in found:
        summary = out.setdefault(g, empty_summary())
        if not total:
            continue
        total, active = int(total), float(active)  # PostgreSQL's SUM of a bigint is a numeric
        summary[kind] = {
            "total_tokens": total,
            "mean_tokens_per_s": round(total / active, 3),
            "median_tokens_per_s": round(float(median), 3),
            "peak_tokens_per_s": round(float(peak), 3),
            "active_s": round(active, 3),
            "tokens_per_joule": None,
        }
    return out


def empty_summary() -> dict[str, Any]:
    """A summary with nothing counted (the shape ``summaries`` gives each group)."""
    return {
        kind: {
            "total_tokens": 0,
            "mean_tokens_per_s": None,
            "median_tokens_per_s": None,
            "peak_tokens_per_s": None,
            "active_s": None,
            "tokens_per_joule": None,
        }
        for kind in KINDS
    }


def with_energy(summary: dict[str, Any], joules: float | None) -> dict[str, Any]:
    """``summary`` with each kind's tokens per joule of ``joules`` (None without a power reading)."""
    for figures in summary.values():
        total = figures["total_tokens"]
        figures["tokens_per_joule"] = round(total / joules, 6) if (joules and total) else None
    return summary


def machine_summary(machine: Machine, since: datetime, until: datetime) -> dict[str, Any]:
    """The machine's throughput over ``[since, until)``, with tokens per joule of all its GPUs."""
    summary = summaries(machine_rows(machine, since, until), "machine_id").get(machine.pk) or empty_summary()
    return with_energy(summary, energy_joules(machine.pk, None, since, until))
