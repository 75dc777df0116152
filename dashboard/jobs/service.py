"""Everything that changes a job: called by the pages, the API, the tasks and the tests alike."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from dashboard.fleet.models import Machine
from dashboard.teams import access as team_access

from . import masking
from .models import AuditEvent, BackfillPolicy, IdempotencyKey, Job, JobAttempt, JobLog

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


@transaction.atomic
def set_backfill(enabled: bool, actor) -> BackfillPolicy:
    """Turn the backfill policy on or off (audited: backfill.on / backfill.off). Turning it off
    sends serving machines back to serving only: their backfill jobs are preempted, and being
    preemptible they are queued again, not lost. Placement reads the switch at every pass."""
    p = BackfillPolicy.objects.select_for_update().get_or_create(pk=1)[0]
    was = p.enabled
    p.enabled, p.changed_at, p.changed_by = enabled, timezone.now(), actor
    p.save()
    audit(actor, "backfill.on" if enabled else "backfill.off", was_enabled=was)
    if not enabled:
        Job.objects.filter(status=Job.Status.RUNNING, backfill=True, preempt_requested=False).update(
            preempt_requested=True
        )
    return p


BROKER_QUIET_S = 10.0  # after a failed send, this process skips sending for this long
_broker_down_until = 0.0


def _enqueue_placement() -> None:
    """Ask a Celery worker for a placement pass now (by task name: tasks.py imports this module).

    A broker that cannot take the message never fails the caller, whose change is already
    committed: the beat tick runs placement every 15 s anyway. Whatever the broker's client
    raises (kombu wraps most errors, not all), the request has succeeded and must say so.
    """
    global _broker_down_until
    if time.monotonic() < _broker_down_until:
        return  # it failed a moment ago: don't make every request wait for the broker's timeouts
    try:
        current_app.send_task(PLACE_TASK, ignore_result=True)
    except Exception as exc:  # noqa: BLE001 - logged; the beat tick is the retry
        _broker_down_until = time.monotonic() + BROKER_QUIET_S
        log.warning("placement request not sent (%s); the next beat tick places the job", exc)


def after_commit_place() -> None:
    """Queue a placement pass for when the current transaction commits; never fails the request."""
    transaction.on_commit(_enqueue_placement, robust=True)


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
            env=masking.masked_env(job.env, job.secret_env),  # the audit log never holds a secret
        )
        after_commit_place()
    return job


def request_sha256(body: dict[str, Any]) -> str:
    """The digest that tells a retried submission (same body) from a different one (same key)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def earlier_submission(user, key: str, sha256: str) -> Job | None:
    """The job an earlier submission with this key made, or None; JobError 409 if its body differed."""
    earlier = IdempotencyKey.objects.select_related("job").filter(user=user, key=key).first()
    if earlier is None:
        return None
    if earlier.request_sha256 != sha256:
        raise JobError(
            f"Idempotency-Key: already used for a different request (job #{earlier.job_id}); use a new key", 409
        )
    return earlier.job


def submit_once(user, fields: dict[str, Any], key: str, sha256: str) -> tuple[Job, bool]:
    """``submit`` under an ``Idempotency-Key``: (the job, True if this call created it).

    A retry with the same key and body returns the job the first call made, whatever happened to
    the first call's answer; the same key with another body is a 409. Two calls racing with one key
    create one job: the key's unique constraint refuses the second, which then returns the first.
    """
    found = earlier_submission(user, key, sha256)
    if found is not None:
        return found, False
    try:
        with transaction.atomic():
            job = submit(user, fields)
            IdempotencyKey.objects.create(user=user, key=key, request_sha256=sha256, job=job)
    except IntegrityError:
        found = earlier_submission(user, key, sha256)
        if found is None:
            raise
        return found, False
    return job, True


def forget_idempotency_keys(now: datetime | None = None) -> int:
    """Delete keys older than IDEMPOTENCY_KEY_TTL_S (a retry later than that creates a new job)."""
    limit = (now or timezone.now()) - timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_S)
    return IdempotencyKey.objects.filter(created_at__lt=limit).delete()[0]


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


def spec(job: Job) -> dict[str, Any]:
    """What the machine's worker needs to run the job's current attempt (docs/design.md, Jobs)."""
    uuids = {a.index: a.uuid for a in job.machine.accelerators.all()} if job.machine else {}
    return {
        "name": job.name,
        "kind": job.kind,
        "argv": job.argv,
        "shell": job.shell or None,
        "workdir": job.workdir or None,
        "env": job.env or {},
        "gpus": job.assigned_gpus,
        "gpu_uuids": [uuids.get(i) or str(i) for i in job.assigned_gpus],
        "max_runtime_s": job.max_runtime_s,
        "grace_s": 10,
        "job_id": job.pk,
        "preemptible": job.preemptible,
        "metrics_url": job.metrics_url or None,
        "progress_pattern": job.progress_pattern or None,
    }


def _worker_heard(machine: Machine, now: datetime) -> None:
    # update(), not save(): ingest writes other columns of the same row concurrently.
    Machine.objects.filter(pk=machine.pk).update(worker_seen_at=now)


def _for_worker(machine: Machine, job_id: int, attempt: int) -> Job:
    job = Job.objects.select_for_update().filter(pk=job_id, machine=machine).first()
    if job is None:
        raise JobError(f"job #{job_id} is not placed on {machine.name}", 404)
    if job.attempt != attempt or job.is_finished or job.status == Job.Status.QUEUED:
        raise JobError(f"attempt {attempt} of job #{job_id} is no longer current ({job.status})", 409)
    return job


def reconcile(machine: Machine, worker_id: str, held: set[tuple[int, int]]) -> list[int]:
    """A worker checks in with the attempts it holds; those it took and no longer holds end here.

    ``held`` is every (job, attempt) the worker is running or still has reports of (its spool).
    An attempt this worker took that it does not hold died with an earlier run of the worker (its
    processes die with it): ``lost``, or back to the queue if it never started (the answer that
    handed it over never arrived). Returns the ids of the jobs that ended or were requeued.
    """
    now = timezone.now()
    _worker_heard(machine, now)
    ended = []
    with transaction.atomic():
        taken = Job.objects.select_for_update().filter(
            machine=machine, worker_id=worker_id, status__in=(Job.Status.RUNNING, Job.Status.UNREACHABLE)
        )
        for job in taken:
            if (job.pk, job.attempt) in held:
                continue
            if job.pgid is None:  # no heartbeat ever: it never ran
                _requeue(job, now, "unclaimed", f"the worker on {machine.name} never received it; queued again")
            else:
                _finish(job, "lost", None, f"the worker on {machine.name} came back without it (it was restarted)")
            ended.append(job.pk)
    return ended


def claim_next(machine: Machine, worker_id: str) -> Job | None:
    """The next job placed on ``machine``, now ``running`` for ``worker_id``; None if there is none.

    Highest priority first, then the longest placed. The conditional UPDATE is the claim: of two
    workers asking at once exactly one changes the row, on PostgreSQL and SQLite alike.
    """
    placed = Job.objects.filter(machine=machine, status=Job.Status.PLACED).order_by("-priority", "placed_at", "pk")
    while True:
        candidate = placed.values_list("pk", "attempt", "cancel_requested").first()
        if candidate is None:
            return None
        job_id, attempt, cancel = candidate
        if cancel:
            with transaction.atomic():
                job = Job.objects.select_for_update().filter(pk=job_id, status=Job.Status.PLACED).first()
                if job is not None:
                    _finish(job, "cancelled", None, "cancelled before it started")
            continue
        if _take(machine, job_id, attempt, worker_id):
            return Job.objects.select_related("machine").get(pk=job_id)
        # Taken or cancelled meanwhile: look again.


def _take(machine: Machine, job_id: int, attempt: int, worker_id: str) -> bool:
    now = timezone.now()
    with transaction.atomic():
        won = Job.objects.filter(
            pk=job_id, machine=machine, attempt=attempt, status=Job.Status.PLACED, cancel_requested=False
        ).update(
            status=Job.Status.RUNNING,
            started_at=now,
            heartbeat_at=now,
            worker_id=worker_id,
            unreachable_since=None,
            host_back_at=None,
            status_message=f"running on {machine.name}",
        )
        if won:
            JobAttempt.objects.filter(job_id=job_id, number=attempt).update(started_at=now)
    if won:
        _worker_heard(machine, now)
    return bool(won)


def claim(machine: Machine, job_id: int, attempt: int, worker_id: str = "") -> Job:
    """placed -> running for this one job (tests and tools; workers take theirs with :func:`claim_next`)."""
    with transaction.atomic():
        job = _for_worker(machine, job_id, attempt)
        if job.status != Job.Status.PLACED:
            raise JobError(f"job #{job_id} attempt {attempt} was already started", 409)
    if not _take(machine, job_id, attempt, worker_id):
        raise JobError(f"job #{job_id} attempt {attempt} was taken or cancelled meanwhile", 409)
    return Job.objects.get(pk=job_id)


def heartbeat(machine: Machine, job_id: int, attempt: int, pgid: int | None) -> dict[str, bool]:
    """The job is alive: an unreachable job is running again; the answer carries cancel/preempt."""
    now = timezone.now()
    with transaction.atomic():
        job = _for_worker(machine, job_id, attempt)
        if job.status == Job.Status.PLACED:
            raise JobError(f"job #{job_id} attempt {attempt} was never started", 409)
        fields = ["heartbeat_at", "pgid"]
        if job.status == Job.Status.UNREACHABLE:
            away_s = (now - job.heartbeat_at).total_seconds() if job.heartbeat_at else 0
            job.status = Job.Status.RUNNING
            job.unreachable_since = job.host_back_at = None
            job.status_message = f"running on {machine.name} (back after {away_s:.0f} s without word)"
            fields += ["status", "unreachable_since", "host_back_at", "status_message"]
        job.heartbeat_at = now
        if pgid is not None:
            job.pgid = pgid
        job.save(update_fields=fields)
        answer = {"cancel": job.cancel_requested, "preempt": job.preempt_requested}
    _worker_heard(machine, now)
    return answer


LOG_LIMIT_NOTE = "\n[hwdash: this job's log reached JOB_LOG_MAX_BYTES; later output is not stored]\n"


def append_log(machine: Machine, job_id: int, attempt: int, chunks: list[dict[str, Any]]) -> int:
    """Store log chunks once each (by seq), up to JOB_LOG_MAX_BYTES a job; returns how many were new.

    Any attempt this machine ran may send its log, also after the attempt ended: a worker replays
    what it spooled while the server was away, and the log of a job that ended meanwhile still
    says what it did. Past the limit one note says so and later chunks are dropped: a chatty job
    must not fill the database, and the worker must not retry them forever either.
    """
    limit = settings.JOB_LOG_MAX_BYTES
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None or not JobAttempt.objects.filter(job=job, number=attempt, machine=machine).exists():
            raise JobError(f"job #{job_id} attempt {attempt} did not run on {machine.name}", 404)
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


def _release(job: Job) -> None:
    job.pgid = None
    job.worker_id = ""
    job.unreachable_since = job.host_back_at = None


def _requeue(job: Job, now: datetime, outcome: str, message: str) -> None:
    """End the current attempt with ``outcome`` and queue the job for a new one."""
    JobAttempt.objects.filter(job=job, number=job.attempt).update(ended_at=now, outcome=outcome, message=message[:500])
    _release(job)
    job.status, job.machine, job.assigned_gpus = Job.Status.QUEUED, None, []
    job.status_message = message[:500]
    job.save()
    after_commit_place()


def _finish(job: Job, outcome: str, exit_code: int | None, message: str) -> None:
    # A lost job was last known alive at its last heartbeat: its run ends there, not when noticed.
    now = job.heartbeat_at if outcome == "lost" and job.heartbeat_at else timezone.now()
    ended = {"ended_at": now, "outcome": outcome, "exit_code": exit_code, "message": message[:500]}
    if outcome == "refused":  # taken, but the host ran nothing of it
        ended["started_at"] = job.started_at = None
    JobAttempt.objects.filter(job=job, number=job.attempt).update(**ended)
    job.exit_code = exit_code
    pgid = job.pgid
    _release(job)
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
    else:
        job.status = OUTCOME_STATUS[outcome]
        job.finished_at = now
        job.status_message = message[:500] or outcome
        job.pgid = pgid  # an ended job keeps its group: ghost memory finds what the job left behind by it
    after_commit_place()  # its GPUs are free for the queue
    job.save()


def finish(machine: Machine, job_id: int, attempt: int, outcome: str, exit_code: int | None, message: str) -> Job:
    """The attempt's end, once: a repeat of an end already stored (a replay) changes nothing.

    A report for an attempt that ended otherwise (the server decided it was lost, or it was
    requeued) is a 409: the job's end is decided once.
    """
    if outcome not in OUTCOME_STATUS and outcome != "preempted":
        raise JobError(f"outcome: unknown outcome {outcome!r}")
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        ran = JobAttempt.objects.filter(job_id=job_id, number=attempt, machine=machine).first()
        if job is None or ran is None:
            raise JobError(f"job #{job_id} attempt {attempt} did not run on {machine.name}", 404)
        if ran.ended_at is not None:
            if ran.outcome == outcome:
                return job  # stored already: the worker did not get the first answer
            raise JobError(f"attempt {attempt} of job #{job_id} has already ended ({ran.outcome})", 409)
        job = _for_worker(machine, job_id, attempt)
        _finish(job, outcome, exit_code, message)
    _worker_heard(machine, timezone.now())
    return job


def _hms(t: datetime | None) -> str:
    return f"{t:%H:%M:%S} UTC" if t else "its start"


def _heard_from_host(machine: Machine | None) -> datetime | None:
    """The latest word from the machine: its agent's telemetry or any call of its worker."""
    if machine is None:
        return None
    times = [t for t in (machine.last_seen_at, machine.worker_seen_at) if t is not None]
    return max(times) if times else None


def mark_lost(now: datetime | None = None) -> list[int]:
    """The beat's check of running work; returns the jobs that became ``lost``.

    * ``running`` with no word from its worker for JOB_UNREACHABLE_AFTER_S -> ``unreachable``: the
      server cannot tell a dead worker from a network or server outage, and the host keeps
      running its jobs while the server is away;
    * ``unreachable`` -> ``lost`` when its host has been heard from again (its agent's telemetry
      or its worker's calls) for JOB_LOST_AFTER_S and its worker still says nothing of the job
      (the worker is dead or hung), or when nothing at all has been heard of the job for
      JOB_SILENT_LOST_AFTER_S (the host never came back); a heartbeat in between makes it
      ``running`` again, and a worker that checks in without it ends it at once (``reconcile``);
    * ``placed`` and not taken for JOB_CLAIM_TIMEOUT_S -> back to the queue.
    """
    now = now or timezone.now()
    silent = now - timedelta(seconds=settings.JOB_UNREACHABLE_AFTER_S)
    gone = now - timedelta(seconds=settings.JOB_SILENT_LOST_AFTER_S)
    lost = []
    with transaction.atomic():
        running = Job.objects.select_for_update(of=("self",)).select_related("machine")
        for job in running.filter(status=Job.Status.RUNNING, heartbeat_at__lt=silent):
            job.status = Job.Status.UNREACHABLE
            job.unreachable_since, job.host_back_at = now, None
            job.status_message = (
                f"unreachable: no word from the worker on {job.machine} since {_hms(job.heartbeat_at)}; "
                "the job may still be running there"
            )
            job.save(update_fields=["status", "unreachable_since", "host_back_at", "status_message"])
        for job in running.filter(status=Job.Status.UNREACHABLE):
            heard = _heard_from_host(job.machine)
            if job.heartbeat_at is None or job.heartbeat_at < gone:
                _finish(
                    job,
                    "lost",
                    None,
                    f"lost: no word of it from {job.machine} since {_hms(job.heartbeat_at)} "
                    f"(JOB_SILENT_LOST_AFTER_S is {settings.JOB_SILENT_LOST_AFTER_S} s)",
                )
                lost.append(job.pk)
            elif heard is not None and heard > job.unreachable_since:
                if job.host_back_at is None:
                    job.host_back_at = now
                    job.save(update_fields=["host_back_at"])
                elif (now - job.host_back_at).total_seconds() >= settings.JOB_LOST_AFTER_S:
                    _finish(
                        job,
                        "lost",
                        None,
                        f"lost: {job.machine} is reachable again but its worker has said nothing of this job "
                        f"since {_hms(job.heartbeat_at)} (the worker died?)",
                    )
                    lost.append(job.pk)
            elif job.host_back_at is not None:  # the host went quiet again: it is not back after all
                job.host_back_at = None
                job.save(update_fields=["host_back_at"])
        # A placed job nobody took (its machine's worker is down or busy) goes back to the queue.
        stale = now - timedelta(seconds=settings.JOB_CLAIM_TIMEOUT_S)
        for job in Job.objects.select_for_update().filter(status=Job.Status.PLACED, placed_at__lt=stale):
            _requeue(job, now, "unclaimed", "no worker picked it up; queued again")
    return lost
