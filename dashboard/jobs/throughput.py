"""A job's tokens: the telemetry rows reported under its id on machines where it really ran.

Telemetry stores the job id each agent reported (``ThroughputSample.job_key``) without a link to
jobs; a row counts for a job only if one of the job's attempts ran on the row's machine, so one
machine's agent token cannot credit tokens to another machine's job.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.cache import cache
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


# The jobs list asks for its jobs' summaries every 5 s per open tab, and fifty serving jobs that
# have run a day are ~450,000 windows to summarise (1.7 s, bench/job_list.py); a mean over a run
# that old moves nothing in 30 s. A job's own page computes its summary fresh (job_summary).
LIST_SUMMARY_TTL_S = 30


def job_summaries(job_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Summaries for a page of jobs (the jobs list, its CSV, the API's list), without energy:
    each at most ``LIST_SUMMARY_TTL_S`` old; those not cached in one query."""
    keys = {job_id: f"jobs:list-summary:{job_id}" for job_id in job_ids}
    cached = cache.get_many(list(keys.values()))
    out = {job_id: cached[key] for job_id, key in keys.items() if key in cached}
    missing = [job_id for job_id in job_ids if job_id not in out]
    if missing:
        fresh = throughput.summaries(rows_of(missing), "job_key")
        # A job without tokens is cached too (as None), or each refresh would look for them again.
        cache.set_many({keys[job_id]: fresh.get(job_id) for job_id in missing}, LIST_SUMMARY_TTL_S)
        out.update((job_id, fresh.get(job_id)) for job_id in missing)
    return {job_id: summary for job_id, summary in out.items() if summary is not None}


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
