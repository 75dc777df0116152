"""A job's tokens: the telemetry rows reported under its id on machines where it really ran.

Telemetry stores the job id each agent reported (``ThroughputSample.job_key``) without a link to
jobs; a row counts for a job only if one of the job's attempts ran on the row's machine, so one
machine's agent token cannot credit tokens to another machine's job.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Exists, OuterRef, QuerySet

from dashboard.core.periods import window_filter
from dashboard.fleet import throughput
from dashboard.fleet.models import Machine, ThroughputRollup, ThroughputSample

from .models import Job, JobAttempt


def rows_of(job_ids: list[int]) -> QuerySet[ThroughputSample]:
    """Token rows of these jobs, from machines where each one ran."""
    ran_there = JobAttempt.objects.filter(job_id=OuterRef("job_key"), machine_id=OuterRef("machine_id"))
    return ThroughputSample.objects.filter(job_key__in=job_ids).filter(Exists(ran_there))


def rollups_of(job_id: int) -> QuerySet[ThroughputRollup]:
    """The job's token rollups, from machines where it ran (as ``rows_of``)."""
    ran_there = JobAttempt.objects.filter(job_id=OuterRef("job_key"), machine_id=OuterRef("machine_id"))
    return ThroughputRollup.objects.filter(job_key=job_id).filter(Exists(ran_there))


def job_summary(job: Job) -> dict[str, Any]:
    """The job's throughput: totals, mean/median/peak tokens/s and tokens per joule of its GPUs."""
    summary = throughput.summaries(rows_of([job.pk]), "job_key").get(job.pk) or throughput.empty_summary()
    joules = None
    if job.machine_id and job.started_at and job.assigned_gpus:
        joules = throughput.energy_joules(job.machine_id, job.assigned_gpus, job.started_at, job.finished_at)
    return throughput.with_energy(summary, joules)


def job_summaries(job_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Summaries for a page of jobs (the jobs list), without energy: one query."""
    return throughput.summaries(rows_of(job_ids), "job_key")


def job_series(job: Job, metric: str, since: datetime, until: datetime) -> dict[str, Any]:
    """The job's tokens/s of one kind (``tokens.train`` ...): at the resolution it was measured
    (about 1 s) over a span of up to two hours, per window beyond."""
    column = throughput.KINDS[throughput.METRICS[metric]]
    label = throughput.LABELS[throughput.METRICS[metric]]
    in_range = rows_of([job.pk]).filter(**window_filter(since, until))
    fine = throughput.fine_series(in_range, metric, since, until, label)
    if fine is not None:
        for s in fine["series"]:
            s.pop("key")
        fine["job"] = job.pk
        return fine
    sums, step = throughput.chart_sums(rows_of([job.pk]), rollups_of(job.pk), column, since, until, "job_key")
    series = throughput.series_from_sums(sums, step, lambda _: label)
    for s in series:
        s.pop("key")
    return throughput.payload(metric, since, until, series, step, job=job.pk)


def names_on(machine: Machine, job_keys: set[int] | None = None) -> dict[int, str]:
    """Labels ('#12 train-7b') of the jobs that ran on ``machine``, for its stacked token chart."""
    jobs = Job.objects.filter(attempts__machine=machine).distinct()
    if job_keys is not None:
        jobs = jobs.filter(pk__in=job_keys)
    return {pk: f"#{pk} {name}" for pk, name in jobs.values_list("pk", "name")}
