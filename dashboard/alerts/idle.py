"""Allocated but idle: a running job whose GPUs stay under ``level`` % SM activity for
``threshold`` minutes. The alert (and its webhook) warns the owner; with the rule's action
"stop", a job still idle as long again afterwards is preempted if preemptible, else cancelled.
Off by default; every warning and stop is in the audit log.

SM activity is GPM's ``sm_util_percent`` where the GPU reports it over the whole span, NVML's
``util_percent`` (time any kernel ran, which overstates work) elsewhere."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction

from dashboard.jobs.models import Job
from dashboard.jobs.service import audit

from .findings import Finding, Fleet, Span, Verdict, span
from .models import AlertRule, IdleAction

DEFAULT_LEVEL_PERCENT = 10.0


def gpu_activity(machine_id: int, gpu: int, since: datetime, now: datetime) -> tuple[str, Span]:
    """The best measure of a GPU's SM activity over the span: ("sm_util_percent" | "util_percent", span)."""
    length = now - since
    sm = span(machine_id, gpu, since, now, "sm_util_percent")
    if sm.covers(since, length):
        return "sm_util_percent", sm
    return "util_percent", span(machine_id, gpu, since, now, "util_percent")


def _stop(rule: AlertRule, job: Job, now: datetime) -> None:
    """Preempt a preemptible job, cancel any other; once per job and rule."""
    what = "preempt" if job.preemptible and job.kind == Job.Kind.TRAIN else "cancel"
    with transaction.atomic():
        _, created = IdleAction.objects.get_or_create(rule=rule, job=job, action=what, defaults={"at": now})
        if not created:
            return
        if what == "preempt":
            Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(preempt_requested=True)
        else:
            message = f"cancel requested: its GPUs stayed under {rule.level or DEFAULT_LEVEL_PERCENT:g} % SM activity"
            Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(
                cancel_requested=True, status_message=message[:500]
            )
        audit(None, f"alerts.idle_{what}", job, rule=rule.pk, rule_name=rule.name, level=rule.level)


def job_allocated_idle(rule: AlertRule, now: datetime, fleet: Fleet) -> Verdict:
    """Running jobs whose every GPU stayed under ``level`` % SM activity for ``threshold`` minutes."""
    verdict = Verdict()
    level = rule.level if rule.level is not None else DEFAULT_LEVEL_PERCENT
    length = timedelta(minutes=rule.threshold)
    since = now - length
    jobs = Job.objects.filter(status=Job.Status.RUNNING, started_at__lte=since, machine__isnull=False).select_related(
        "machine"
    )
    if rule.machine_id:
        jobs = jobs.filter(machine_id=rule.machine_id)
    for job in jobs:
        key = f"job:{job.pk}"
        if not job.assigned_gpus:
            continue
        readings = [gpu_activity(job.machine_id, gpu, since, now) for gpu in job.assigned_gpus]
        if any(s.windows and s.top is not None and s.top >= level for _, s in readings):
            continue  # busy at some point: not idle
        if not all(s.covers(since, length) for _, s in readings):
            verdict.unknown.add(key)
            continue
        measure = "SM activity" if all(m == "sm_util_percent" for m, _ in readings) else "utilisation (no GPM)"
        top = max(s.top or 0.0 for _, s in readings)
        verdict.firing.append(
            Finding(
                key,
                f"Job #{job.pk} {job.name} on {job.machine.name} holds GPU {', '.join(map(str, job.assigned_gpus))} "
                f"at under {level:g} % {measure} (at most {top:.1f} %) for {rule.threshold:g} min",
                job.machine_id,
                job_id=job.pk,
            )
        )
        warned, created = IdleAction.objects.get_or_create(rule=rule, job=job, action="warned", defaults={"at": now})
        if created:
            audit(None, "alerts.idle_warn", job, rule=rule.pk, rule_name=rule.name, level=level, measure=measure)
        elif rule.action == AlertRule.Action.STOP and now - warned.at >= length:
            _stop(rule, job, now)
    return verdict
