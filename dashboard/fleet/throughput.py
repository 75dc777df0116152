"""Tokens per second, from the token counts that ride in agent windows (ThroughputSample).

A window's count over its length is its rate; a chart step's rate is the tokens of the windows
ending in it over the step's length, so areas under the chart are token totals. Tokens per joule
divide tokens by the energy the GPUs drew over the same windows (power x window length).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import datetime
from typing import Any

from django.db.models import F, Sum

from .models import GpuSample, Machine, ThroughputSample
from .series import step_for

KINDS = {"prompt": "prompt_tokens", "generated": "generated_tokens", "train": "train_tokens"}
METRICS = {f"tokens.{k}": k for k in KINDS}
LABELS = {"prompt": "Prompt tokens", "generated": "Generated tokens", "train": "Training tokens"}


def _series(rows, since: datetime, until: datetime, key_name) -> list[dict[str, Any]]:
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


def _payload(metric: str, since: datetime, until: datetime, series: list, step: int, **extra) -> dict[str, Any]:
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


def machine_series(machine: Machine, metric: str, since: datetime, until: datetime) -> dict[str, Any]:
    """tokens/s on one machine, one series per job (stacked in the chart); unattributed last."""
    column = KINDS[METRICS[metric]]
    rows = (
        ThroughputSample.objects.filter(machine=machine, ts__gte=since, ts__lt=until, **{f"{column}__gt": 0})
        .order_by("ts")
        .values_list("job_id", "job__name", "ts", column)
    )
    names = {}
    flat = []
    for job_id, name, ts, tokens in rows:
        names[job_id] = name
        flat.append((job_id, ts, tokens))
    series, step = _series(flat, since, until, lambda j: f"#{j} {names[j]}" if j else "outside jobs")
    for s in series:
        s["job"] = s.pop("key")
    return _payload(metric, since, until, series, step, machine=machine.name)


def job_series(job, metric: str, since: datetime, until: datetime) -> dict[str, Any]:
    column = KINDS[METRICS[metric]]
    rows = (
        ThroughputSample.objects.filter(job=job, ts__gte=since, ts__lt=until).order_by("ts").values_list("ts", column)
    )
    series, step = _series([(None, ts, n) for ts, n in rows if n], since, until, lambda _: LABELS[METRICS[metric]])
    for s in series:
        s.pop("key")
    return _payload(metric, since, until, series, step, job=job.pk)


def fleet_series(metric: str, since: datetime, until: datetime) -> dict[str, Any]:
    """The whole fleet's tokens/s, one series per machine (stacked, so the top is the total)."""
    column = KINDS[METRICS[metric]]
    rows = (
        ThroughputSample.objects.filter(ts__gte=since, ts__lt=until, **{f"{column}__gt": 0})
        .order_by("ts")
        .values_list("machine__name", "ts", column)
    )
    series, step = _series(list(rows), since, until, lambda m: m)
    for s in series:
        s["machine"] = s.pop("key")
    return _payload(metric, since, until, series, step)


def _energy_joules(
    machine_id: int, gpus: list[int] | None, since: datetime | None, until: datetime | None
) -> float | None:
    """GPU energy over raw windows: sum of mean power x window length; None without a power reading."""
    qs = GpuSample.objects.filter(machine_id=machine_id, power_watts_mean__isnull=False)
    if gpus is not None:
        qs = qs.filter(gpu_index__in=gpus)
    if since:
        qs = qs.filter(ts__gte=since)
    if until:
        qs = qs.filter(ts__lte=until)
    joules = qs.aggregate(j=Sum(F("power_watts_mean") * F("interval_s")))["j"]
    return float(joules) if joules else None


def summary(windows: dict[int, dict[str, float]], intervals: dict[int, float], joules: float | None) -> dict[str, Any]:
    """Per kind: total tokens, mean/median/peak tokens/s over windows, and tokens per joule."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        rates = [
            windows[seq][kind] / intervals[seq] for seq in sorted(windows) if windows[seq][kind] and intervals[seq]
        ]
        total = sum(windows[seq][kind] for seq in windows)
        out[kind] = {
            "total_tokens": int(total),
            "mean_tokens_per_s": round(total / sum(intervals[s] for s in windows if windows[s][kind]), 3)
            if rates
            else None,
            "median_tokens_per_s": round(statistics.median(rates), 3) if rates else None,
            "peak_tokens_per_s": round(max(rates), 3) if rates else None,
            "tokens_per_joule": round(total / joules, 6) if (joules and total) else None,
        }
    return out


def _windows(qs) -> tuple[dict[int, dict[str, float]], dict[int, float]]:
    windows: dict[int, dict[str, float]] = defaultdict(lambda: {k: 0.0 for k in KINDS})
    intervals: dict[int, float] = {}
    for seq, interval, p, g, t in qs.values_list(
        "seq", "interval_s", "prompt_tokens", "generated_tokens", "train_tokens"
    ):
        windows[seq]["prompt"] += p
        windows[seq]["generated"] += g
        windows[seq]["train"] += t
        intervals[seq] = interval
    return windows, intervals


def job_summary(job) -> dict[str, Any]:
    """The job's throughput: totals, mean/median/peak tokens/s and tokens per joule of its GPUs."""
    windows, intervals = _windows(ThroughputSample.objects.filter(job=job))
    joules = None
    if job.machine_id and job.started_at and job.assigned_gpus:
        joules = _energy_joules(job.machine_id, job.assigned_gpus, job.started_at, job.finished_at)
    return summary(windows, intervals, joules)


def machine_summary(machine: Machine, since: datetime, until: datetime) -> dict[str, Any]:
    qs = ThroughputSample.objects.filter(machine=machine, ts__gte=since, ts__lt=until)
    windows, intervals = _windows(qs)
    return summary(windows, intervals, _energy_joules(machine.pk, None, since, until))


def job_summaries(job_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Summaries for a page of jobs (the jobs list), without energy: one query."""
    per_job: dict[int, Any] = defaultdict(lambda: (defaultdict(lambda: {k: 0.0 for k in KINDS}), {}))
    rows = ThroughputSample.objects.filter(job_id__in=job_ids).values_list(
        "job_id", "seq", "interval_s", "prompt_tokens", "generated_tokens", "train_tokens"
    )
    for job_id, seq, interval, p, g, t in rows:
        windows, intervals = per_job[job_id]
        windows[seq]["prompt"] += p
        windows[seq]["generated"] += g
        windows[seq]["train"] += t
        intervals[seq] = interval
    return {job_id: summary(w, i, None) for job_id, (w, i) in per_job.items()}
