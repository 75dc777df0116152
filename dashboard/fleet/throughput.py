"""Tokens per second, from the token counts that ride in agent windows (ThroughputSample).

A window's count over its length is its rate; a chart step's rate is the tokens of the windows
ending in it over the step's length, so areas under the chart are token totals. Tokens per joule
divide tokens by the energy the GPUs drew over the same windows (power x window length).

Several sources may count the same job's tokens in one window (its output and its engine's
metrics): per window and job the source that counted most is kept (``window_tokens``), and every
figure here, in reports and in RoI is built on that one rule.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import F, Max, QuerySet, Sum

from dashboard.core.periods import window_filter

from .models import GpuSample, Machine, ThroughputSample
from .series import step_for

KINDS = {"prompt": "prompt_tokens", "generated": "generated_tokens", "train": "train_tokens"}
METRICS = {f"tokens.{k}": k for k in KINDS}
LABELS = {"prompt": "Prompt tokens", "generated": "Generated tokens", "train": "Training tokens"}


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


def window_tokens(rows: QuerySet[ThroughputSample]) -> list[WindowTokens]:
    """Per window and job among ``rows``: for each kind the count of the source that counted most."""
    grouped = (
        rows.values("machine_id", "seq", "job_key")
        .annotate(
            ts=Max("ts"),
            interval_s=Max("interval_s"),
            p=Max("prompt_tokens"),
            g=Max("generated_tokens"),
            t=Max("train_tokens"),
        )
        .order_by()
    )
    return [
        WindowTokens(
            r["machine_id"], r["seq"], r["job_key"], r["ts"], r["interval_s"], r["p"] or 0, r["g"] or 0, r["t"] or 0
        )
        for r in grouped
    ]


def machine_rows(machine: Machine, since: datetime, until: datetime) -> QuerySet[ThroughputSample]:
    """The machine's token rows stamped in ``[since, until)``."""
    return ThroughputSample.objects.filter(machine=machine, **window_filter(since, until))


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


def fleet_series(metric: str, since: datetime, until: datetime) -> dict[str, Any]:
    """The whole fleet's tokens/s, one series per machine (stacked, so the top is the total)."""
    column = KINDS[METRICS[metric]]
    rows = (
        ThroughputSample.objects.filter(**window_filter(since, until), **{f"{column}__gt": 0})
        .order_by("ts")
        .values_list("machine__name", "ts", column)
    )
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
    if since:
        qs = qs.filter(ts__gte=since)
    if until:
        qs = qs.filter(ts__lt=until)
    joules = qs.aggregate(j=Sum(F("power_watts_mean") * F("interval_s")))["j"]
    return float(joules) if joules else None


def summary(windows: Iterable[WindowTokens], joules: float | None) -> dict[str, Any]:
    """Per kind: total tokens, mean/median/peak tokens/s over windows, and tokens per joule."""
    per_window: dict[tuple[int, int], dict[str, float]] = defaultdict(lambda: {k: 0.0 for k in KINDS})
    intervals: dict[tuple[int, int], float] = {}
    for w in windows:
        key = (w.machine_id, w.seq)
        per_window[key]["prompt"] += w.prompt
        per_window[key]["generated"] += w.generated
        per_window[key]["train"] += w.train
        intervals[key] = w.interval_s
    out: dict[str, Any] = {}
    for kind in KINDS:
        keys = [k for k in sorted(per_window) if per_window[k][kind] and intervals[k]]
        rates = [per_window[k][kind] / intervals[k] for k in keys]
        total = sum(per_window[k][kind] for k in per_window)
        out[kind] = {
            "total_tokens": int(total),
            "mean_tokens_per_s": round(total / sum(intervals[k] for k in keys), 3) if rates else None,
            "median_tokens_per_s": round(statistics.median(rates), 3) if rates else None,
            "peak_tokens_per_s": round(max(rates), 3) if rates else None,
            "tokens_per_joule": round(total / joules, 6) if (joules and total) else None,
        }
    return out


def machine_summary(machine: Machine, since: datetime, until: datetime) -> dict[str, Any]:
    """The machine's throughput over ``[since, until)``, with tokens per joule of all its GPUs."""
    windows = window_tokens(machine_rows(machine, since, until))
    return summary(windows, energy_joules(machine.pk, None, since, until))
