"""Everything that changes a job: called by the pages, the API, the tasks and the tests alike."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

from dashboard.fleet.models import Machine
from dashboard.teams import access as team_access

from .models import AuditEvent, Job, JobAttempt, JobLog

log = logging.getLogger(__name__)
PLACE_TASK = "dashboard.jobs.tasks.place"


class JobError(Exception):
    """A refused change, with the HTTP status it maps to and a sentence for the user."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def audit(actor, action: str, job: Job | None = None, **detail: Any) -> None:
    AuditEvent.objects.create(
        actor=actor if getattr(actor, "pk", None) else None, action=action, job=job, detail=detail
    )


def _enqueue_placement() -> None:
    """Ask a Celery worker for a placement pass now (by task name: tasks.py imports this module).

    A broker that cannot take the message never fails the caller, whose change is already
    committed: the beat tick runs placement every 15 s anyway.
    """
    try:
        current_app.send_task(PLACE_TASK, ignore_result=True)
    except (OperationalError, OSError) as exc:
        log.warning("placement request not sent (%s); the next beat tick places the job", exc)


def submit(user, fields: dict[str, Any]) -> Job:
    """Queue a job for ``user`` (already validated fields); placement runs once it is committed."""
    # The team: as given (a Team), else the user's only team; the role there decides (dashboard/teams/access.py).
    team = fields.pop("team", None) or team_access.team_for_submit(user, None)
    if team is None:
        raise JobError("team: you may submit for several teams; name one", 400)
    if not team_access.can_submit(user, team.pk):
        raise JobError(f"only operators and admins may submit jobs (for team {team.slug})", 403)
    # Optional text fields arrive as None from the API and the form; the columns say "" for none.
    fields = {
        k: v
        for k, v in fields.items()
        if not (v is None and k in ("metrics_url", "progress_pattern", "shell", "workdir", "precision"))
    }
    with transaction.atomic():
        job = Job.objects.create(owner=user, team=team, status_message="waiting for placement", **fields)
        audit(
            user,
            "job.submit",
            job,
            name=job.name,
            kind=job.kind,
            command=job.command_display,
            machine=job.target.name if job.target else None,
            gpus=job.gpus,
            gpu_memory_gb=job.gpu_memory_gb,
            team=team.slug,
        )
        transaction.on_commit(_enqueue_placement)
    return job


def can_cancel(user, job: Job) -> bool:
    if user.is_authenticated and team_access.is_team_admin(user, job.team_id):
        return True  # a team's admins may cancel any of its jobs; staff are admins of every team
    return bool(user.is_authenticated and job.owner_id == user.pk and team_access.can_submit(user, job.team_id))


def cancel(user, job: Job) -> Job:
    """Cancel a queued job at once; ask a placed or running one's worker to stop it."""
    if not can_cancel(user, job):
        raise JobError("only the job's owner (an operator) or an admin may cancel it", 403)
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.is_finished:
            raise JobError(f"job #{job.pk} has already ended ({job.status})", 409)
        now = timezone.now()
        job.cancel_requested = True
        if job.status == Job.Status.QUEUED:
            job.status = Job.Status.CANCELLED
            job.finished_at = now
            job.status_message = f"cancelled by {user}"
        else:
            job.status_message = f"cancel requested by {user}; stopping"
        job.save()
        audit(user, "job.cancel", job, status=job.status)
    return job


# ---- the worker's side: each call names the attempt, and a stale attempt gets a 409 ----------


def _for_worker(machine: Machine, job_id: int, attempt: int) -> Job:
    job = Job.objects.select_for_update().filter(pk=job_id, machine=machine).first()
    if job is None:
        raise JobError(f"job #{job_id} is not placed on {machine.name}", 404)
    if job.attempt != attempt or job.is_finished or job.status == Job.Status.QUEUED:
        raise JobError(f"attempt {attempt} of job #{job_id} is no longer current ({job.status})", 409)
    return job


def claim(machine: Machine, job_id: int, attempt: int) -> Job:
    """placed -> running, exactly once: a redelivered task message gets a 409 and runs nothing."""
    with transaction.atomic():
        job = _for_worker(machine, job_id, attempt)
        if job.status != Job.Status.PLACED:
            raise JobError(f"job #{job_id} attempt {attempt} was already started", 409)
        if job.cancel_requested:
            _finish(job, "cancelled", None, "cancelled before it started")
            raise JobError(f"job #{job_id} was cancelled", 409)
        now = timezone.now()
        job.status = Job.Status.RUNNING
        job.started_at = job.heartbeat_at = now
        job.status_message = f"running on {machine.name}"
        job.save(update_fields=["status", "started_at", "heartbeat_at", "status_message"])
        JobAttempt.objects.filter(job=job, number=attempt).update(started_at=now)
    return job


def heartbeat(machine: Machine, job_id: int, attempt: int, pgid: int | None) -> dict[str, bool]:
    with transaction.atomic():
        job = _for_worker(machine, job_id, attempt)
        job.heartbeat_at = timezone.now()
        if pgid is not None:
            job.pgid = pgid
        job.save(update_fields=["heartbeat_at", "pgid"])
        return {"cancel": job.cancel_requested, "preempt": job.preempt_requested}


LOG_LIMIT_NOTE = "\n[hwdash: this job's log reached JOB_LOG_MAX_BYTES; later output is not stored]\n"


def append_log(machine: Machine, job_id: int, attempt: int, chunks: list[dict[str, Any]]) -> int:
    """Store log chunks once each (by seq), up to JOB_LOG_MAX_BYTES a job; returns how many were new.

    Past the limit one note says so and later chunks are dropped: a chatty job must not fill the
    database, and the worker must not retry them forever either.
    """
    limit = settings.JOB_LOG_MAX_BYTES
    with transaction.atomic():
        job = _for_worker(machine, job_id, attempt)
        seqs = [c["seq"] for c in chunks]
        known = set(JobLog.objects.filter(job=job, attempt=attempt, seq__in=seqs).values_list("seq", flat=True))
        rows = []
        for c in chunks:
            if c["seq"] in known or job.log_bytes > limit:
                continue
            known.add(c["seq"])
            text = c["text"]
            size = len(text.encode())
            if job.log_bytes + size > limit:
                text, size = LOG_LIMIT_NOTE, limit + 1 - job.log_bytes  # marks the job as full
            job.log_bytes += size
            rows.append(
                JobLog(
                    job=job,
                    attempt=attempt,
                    seq=c["seq"],
                    stream=c["stream"],
                    text=text,
                    ts=datetime.fromtimestamp(c["ts"], tz=UTC),
                )
            )
        JobLog.objects.bulk_create(rows, ignore_conflicts=True)
        if rows:
            job.save(update_fields=["log_bytes"])
        return len(rows)


OUTCOME_STATUS = {
    "succeeded": Job.Status.SUCCEEDED,
    "failed": Job.Status.FAILED,
    "cancelled": Job.Status.CANCELLED,
    "timeout": Job.Status.FAILED,
    "refused": Job.Status.FAILED,
    "lost": Job.Status.LOST,
}


def _finish(job: Job, outcome: str, exit_code: int | None, message: str) -> None:
    now = timezone.now()
    JobAttempt.objects.filter(job=job, number=job.attempt).update(
        ended_at=now, outcome=outcome, exit_code=exit_code, message=message[:500]
    )
    job.exit_code = exit_code
    job.pgid = None
    if outcome == "preempted":
        # Back to the queue; the next placement is a new attempt.
        job.status = Job.Status.QUEUED
        job.preempt_requested = False
        job.machine = None
        job.assigned_gpus = []
        job.status_message = (
            "preempted: its team's borrowed GPUs were needed back; queued to resume"
            if job.borrowing
            else "preempted by a higher-priority serving job; queued to resume"
        )
        transaction.on_commit(_enqueue_placement)
    else:
        job.status = OUTCOME_STATUS[outcome]
        job.finished_at = now
        job.status_message = message[:500] or outcome
        transaction.on_commit(_enqueue_placement)  # its GPUs are free for the queue
    job.save()


def finish(machine: Machine, job_id: int, attempt: int, outcome: str, exit_code: int | None, message: str) -> Job:
    if outcome not in OUTCOME_STATUS and outcome != "preempted":
        raise JobError(f"outcome: unknown outcome {outcome!r}")
    with transaction.atomic():
        job = _for_worker(machine, job_id, attempt)
        _finish(job, outcome, exit_code, message)
    return job


def mark_lost(now: datetime | None = None) -> list[int]:
    """Running jobs whose worker stopped sending heartbeats become lost, freeing their GPUs."""
    now = now or timezone.now()
    limit = now - timedelta(seconds=settings.JOB_LOST_AFTER_S)
    lost = []
    with transaction.atomic():
        for job in Job.objects.select_for_update().filter(status=Job.Status.RUNNING, heartbeat_at__lt=limit):
            _finish(
                job,
                "lost",
                None,
                f"no heartbeat from the worker on {job.machine} since {job.heartbeat_at:%H:%M:%S} UTC",
            )
            lost.append(job.pk)
        # A placed job nobody claimed (its machine's worker is down) goes back to the queue.
        stale = now - timedelta(seconds=settings.JOB_CLAIM_TIMEOUT_S)
        for job in Job.objects.select_for_update().filter(status=Job.Status.PLACED, placed_at__lt=stale):
            JobAttempt.objects.filter(job=job, number=job.attempt).update(ended_at=now, outcome="unclaimed")
            job.status, job.machine, job.assigned_gpus = Job.Status.QUEUED, None, []
            job.status_message = "no worker picked it up; queued again"
            job.save()
    return lost
