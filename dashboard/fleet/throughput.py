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
import statistics
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db.models import F, QuerySet, Sum

from dashboard.core.periods import window_filter

from .models import GpuSample, Machine, ThroughputSample
from .series import step_for
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
    measured: list[tuple[float, float, float]] = []
    for row in rows.filter(**{f"{column}__gt": 0}).values_list("ts", "interval_s", "active_s", "points", column):
        measured.extend(points_of(row, kind))
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


def _series(rows, since: datetime, until: datetime, key_name: Callable[[Any], str]) -> tuple[list[dict], int]:
    """rows of (key, ts, tokens) -> one series per key of tokens/s per step."""
    step = step_for(until - since, 10)
    buckets: dict[Any, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for key, ts, tokens in rows:
        epoch = int(ts.timestamp())
        buckets[key][epoch - epoch % step] += tokens
    series = []
    for key in sorted(buckets, key=lambda k: (k is None, k)):
        times = sorted(buckets[key])
        series.append(
            {
                "key": key,
                "name": key_name(key),
                "t": [(b + step // 2) * 1000 for b in times],
                "mean": [round(buckets[key][b] / step, 3) for b in times],
            }
        )
    return series, step


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


def series_of(
    rows: Iterable[tuple[Any, datetime, float]], metric: str, since: datetime, until: datetime, name, **extra
) -> dict[str, Any]:
    """A tokens/s chart from (key, ts, tokens) rows, one series per key named by ``name(key)``."""
    series, step = _series(rows, since, until, name)
    return payload(metric, since, until, series, step, **extra)


def machine_series(
    machine: Machine, metric: str, since: datetime, until: datetime, job_names: dict[int, str] | None = None
) -> dict[str, Any]:
    """tokens/s on one machine, one series per job (stacked in the chart); unattributed last.

    ``job_names`` maps the ids of jobs that really ran on this machine to their labels (the jobs
    app knows them); tokens reported under any other id count as outside jobs.
    """
    column = KINDS[METRICS[metric]]
    names = job_names or {}
    rows = machine_rows(machine, since, until).filter(**{f"{column}__gt": 0}).order_by("ts")
    flat = [(key if key in names else None, ts, n) for key, ts, n in rows.values_list("job_key", "ts", column)]
    data = series_of(flat, metric, since, until, lambda j: names[j] if j else "outside jobs", machine=machine.name)
    for s in data["series"]:
        s["job"] = s.pop("key")
    return data


def fleet_series(
    metric: str, since: datetime, until: datetime, machine_ids: Collection[int] | None = None
) -> dict[str, Any]:
    """The fleet's tokens/s, one series per machine (stacked, so the top is the total); only the
    machines of ``machine_ids`` (None: every machine)."""
    column = KINDS[METRICS[metric]]
    samples = ThroughputSample.objects.filter(**window_filter(since, until), **{f"{column}__gt": 0})
    rows = only(samples, machine_ids).order_by("ts").values_list("machine__name", "ts", column)
    data = series_of(list(rows), metric, since, until, lambda m: m)
    for s in data["series"]:
        s["machine"] = s.pop("key")
    return data


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


def summary(windows: Iterable[WindowTokens], joules: float | None) -> dict[str, Any]:
    """Per kind: total tokens; mean tokens/s (all tokens over the seconds spent producing them),
    median and peak of the windows' rates over their active seconds; active seconds; tokens per
    joule. Jobs sharing a window count the longest of their active times (they ran side by side)."""
    counts: dict[tuple[int, int], dict[str, float]] = defaultdict(lambda: {k: 0.0 for k in KINDS})
    seconds: dict[tuple[int, int], dict[str, float]] = defaultdict(lambda: {k: 0.0 for k in KINDS})
    for w in windows:
        key = (w.machine_id, w.seq)
        for kind in KINDS:
            n = w.count(kind)
            if n:
                counts[key][kind] += n
                seconds[key][kind] = max(seconds[key][kind], w.seconds(kind))
    out: dict[str, Any] = {}
    for kind in KINDS:
        keys = [k for k in sorted(counts) if counts[k][kind] and seconds[k][kind]]
        rates = [counts[k][kind] / seconds[k][kind] for k in keys]
        total = sum(counts[k][kind] for k in counts)
        active = sum(seconds[k][kind] for k in keys)
        out[kind] = {
            "total_tokens": int(total),
            "mean_tokens_per_s": round(total / active, 3) if rates else None,
            "median_tokens_per_s": round(statistics.median(rates), 3) if rates else None,
            "peak_tokens_per_s": round(max(rates), 3) if rates else None,
            "active_s": round(active, 3) if rates else None,
            "tokens_per_joule": round(total / joules, 6) if (joules and total) else None,
        }
    return out


def machine_summary(machine: Machine, since: datetime, until: datetime) -> dict[str, Any]:
    """The machine's throughput over ``[since, until)``, with tokens per joule of all its GPUs."""
    windows = window_tokens(machine_rows(machine, since, until))
    return summary(windows, energy_joules(machine.pk, None, since, until))
