"""Ghost memory: GPU memory held by processes outside any running job, and its cleanup.

From a machine's newest window (each GPU process with its pid, process group, memory and
whether the host's process table still has it) a process is a ghost when it is not in the
process group of a job running there and it is

* ``gone``: NVML still charges memory to a pid the host no longer has;
* ``orphaned``: in the process group of a job that ended (its group was killed outside the
  worker, or a child outlived it);
* ``unknown``: in no job's group and not named in the rule's allowed services.

The rule fires once per machine while a ghost has held memory for ``threshold`` minutes. An
operator who may stop the job (its owner or a team admin, the rule of ``jobs.service.can_cancel``)
confirms the cleanup of an orphaned group; the machine's worker fetches the request and stops the
group only if it ran that job. Gone and unknown processes are reported, never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from dashboard.fleet.models import Machine
from dashboard.jobs.models import Job, JobAttempt
from dashboard.jobs.service import audit, can_cancel

from .findings import Finding, Fleet, Verdict
from .models import AlertRule, CleanupRequest, GhostProcess

GIB = 2**30


class CleanupError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _processes(latest: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """GPU processes of a window by pid, with the devices they hold memory on and their total."""
    found: dict[int, dict[str, Any]] = {}
    for gpu in latest.get("gpus") or ():
        for proc in gpu.get("processes") or ():
            entry = found.setdefault(proc["pid"], {**proc, "gpus": [], "mem_used_bytes": None})
            entry["gpus"].append(gpu["index"])
            if proc.get("mem_used_bytes") is not None:
                entry["mem_used_bytes"] = (entry["mem_used_bytes"] or 0) + proc["mem_used_bytes"]
    return found


def classify(machine: Machine, allowed: set[str], jobs: list[Job] | None = None) -> list[dict[str, Any]]:
    """The ghosts in ``machine``'s newest window: process fields plus ``reason`` and ``job`` (or None).

    ``jobs``: the machine's jobs that have a process group, by finish time (read here if not given)."""
    if jobs is None:
        jobs = list(Job.objects.filter(machine=machine, pgid__isnull=False).order_by("finished_at", "pk"))
    running = {j.pgid for j in jobs if j.status in Job.ACTIVE}
    ended: dict[int, Job] = {}
    for job in jobs:
        if job.status in Job.FINISHED and job.pgid is not None:
            ended[job.pgid] = job  # the latest job with that group wins (pgids are reused)
    ghosts = []
    for pid, proc in sorted(_processes(machine.latest or {}).items()):
        pgid = proc.get("pgid")
        if pgid is not None and pgid in running:
            continue
        job = ended.get(pgid) if pgid is not None else None
        if proc.get("exists") is False:
            reason = GhostProcess.Reason.GONE
        elif job is not None:
            reason = GhostProcess.Reason.ORPHANED
        elif (proc.get("name") or "") in allowed:
            continue
        else:
            reason = GhostProcess.Reason.UNKNOWN
        ghosts.append({**proc, "pid": pid, "reason": reason, "job": job})
    return ghosts


# How far a tracked process's last_seen_at may lag the last run that saw it.
SEEN_RESOLUTION = timedelta(minutes=5)


@dataclass(slots=True)
class _Tracked:
    """A GhostProcess as the rule reads and judges it (pk None: first seen in this run).

    Plain records, not model instances: at 3,000 machines with a ghost per GPU, building 24,000
    GhostProcess objects (and parsing their two times) was half the rule's 1.7 s (bench/alerts.py)."""

    pk: int | None
    pid: int
    pgid: int | None
    name: str
    user: str
    gpus: list[int]
    mem_used_bytes: int | None
    reason: str
    job_id: int | None
    first_seen_at: datetime

    def model(self, machine_id: int, now: datetime) -> GhostProcess:
        """The row to write, marked seen now."""
        return GhostProcess(
            pk=self.pk,
            machine_id=machine_id,
            pid=self.pid,
            pgid=self.pgid,
            name=self.name,
            user=self.user,
            gpus=self.gpus,
            mem_used_bytes=self.mem_used_bytes,
            reason=self.reason,
            job_id=self.job_id,
            first_seen_at=self.first_seen_at,
            last_seen_at=now,
        )


TRACKED = ("pk", "pid", "pgid", "name", "user", "gpus", "mem_used_bytes", "reason", "job_id", "first_seen_at")


class _Writes:
    """The ghost rows one evaluation creates, changes and forgets, written in a few statements."""

    FIELDS = ("pgid", "name", "user", "gpus", "mem_used_bytes", "reason", "job", "last_seen_at")

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.create: list[GhostProcess] = []
        self.update: list[GhostProcess] = []  # changed beyond being seen again
        self.machines: list[int] = []  # tracked now: every row of theirs that is kept was seen now
        self.delete: list[int] = []

    def flush(self) -> None:
        # Forgotten first: a reused pid's old row and its new one share (machine, pid).
        for start in range(0, len(self.delete), 5000):
            GhostProcess.objects.filter(pk__in=self.delete[start : start + 5000]).delete()
        # What is left of the tracked machines' rows was seen now: one statement by machine, not a
        # list of ~6,000 row ids at 750 machines (converting those parameters took 0.2 s a run).
        # Only rows not marked for SEEN_RESOLUTION: marking every row each 30 s run rewrote ~24,000
        # rows a run at 3,000 machines, for a time nothing judges by (first_seen_at is what counts).
        stale = self.now - SEEN_RESOLUTION
        for start in range(0, len(self.machines), 5000):
            GhostProcess.objects.filter(
                machine_id__in=self.machines[start : start + 5000], last_seen_at__lte=stale
            ).update(last_seen_at=self.now)
        GhostProcess.objects.bulk_update(self.update, self.FIELDS, batch_size=500)
        GhostProcess.objects.bulk_create(self.create, batch_size=500)


def _track(
    machine: Machine, ghosts: list[dict[str, Any]], now: datetime, known: dict[int, _Tracked], writes: _Writes
) -> list[_Tracked]:
    """Remember since when each ghost holds memory; forget the ones that are gone from the list
    (``known``: the machine's rows by pid; what changes goes into ``writes``)."""
    known = dict(known)
    kept = []
    for ghost in ghosts:
        row = known.pop(ghost["pid"], None)
        pgid, name = ghost.get("pgid"), ghost.get("name") or ""
        job = ghost["job"]
        values = (ghost.get("user") or "", ghost["gpus"], ghost.get("mem_used_bytes"), ghost["reason"], job and job.pk)
        if row is not None and row.pgid == pgid and row.name == name:
            if (row.user, row.gpus, row.mem_used_bytes, row.reason, row.job_id) != values:
                row.user, row.gpus, row.mem_used_bytes, row.reason, row.job_id = values
                writes.update.append(row.model(machine.pk, now))
            # else: an unchanged row's last_seen_at moves with its machine's (_Writes.flush)
        else:
            if row is not None:
                writes.delete.append(row.pk)  # a reused pid is a new process
            row = _Tracked(None, ghost["pid"], pgid, name, *values, first_seen_at=now)
            writes.create.append(row.model(machine.pk, now))
        kept.append(row)
    writes.delete.extend(r.pk for r in known.values())
    writes.machines.append(machine.pk)
    return kept


def _summary(machine: Machine, old: list[_Tracked], minutes: float) -> str:
    held = sum(g.mem_used_bytes or 0 for g in old) / GIB
    parts = []
    orphaned = [g for g in old if g.reason == GhostProcess.Reason.ORPHANED]
    if orphaned:
        jobs = sorted({f"#{g.job_id}" for g in orphaned if g.job_id})
        parts.append(f"{len(orphaned)} left by ended job(s) {', '.join(jobs)} (cleanup can be confirmed)")
    gone = [g for g in old if g.reason == GhostProcess.Reason.GONE]
    if gone:
        parts.append(f"{len(gone)} dead pid(s) still charged memory")
    unknown = [g for g in old if g.reason == GhostProcess.Reason.UNKNOWN]
    if unknown:
        named = ", ".join(f"{g.name or '?'} pid {g.pid}" for g in unknown[:3]) + (" …" if len(unknown) > 3 else "")
        parts.append(f"{len(unknown)} outside any job ({named})")
    return f"{machine.name}: {held:.1f} GiB of GPU memory held for {minutes:g}+ min outside running jobs: " + "; ".join(
        parts
    )


def ghost_memory(rule: AlertRule, now: datetime, fleet: Fleet) -> Verdict:
    """Machines where a ghost has held GPU memory for ``threshold`` minutes or more."""
    verdict = Verdict()
    wait = timedelta(minutes=rule.threshold)
    reported = fleet.machines(rule, reported=True)
    online = [m for m in reported if m.is_online(now)]
    # Read for the whole fleet at once and written in bulk: per machine this was five queries and a
    # save per ghost every 30 s (the evaluation took 45 s of every 30 s run at 750 machines).
    ids = [m.pk for m in online]
    jobs: dict[int, list[Job]] = {}
    for job in Job.objects.filter(machine_id__in=ids, pgid__isnull=False).order_by("finished_at", "pk"):
        jobs.setdefault(job.machine_id, []).append(job)
    known: dict[int, dict[int, _Tracked]] = {}
    for machine_id, *fields in GhostProcess.objects.filter(machine_id__in=ids).values_list("machine_id", *TRACKED):
        g = _Tracked(*fields)
        known.setdefault(machine_id, {})[g.pid] = g
    writes = _Writes(now)
    tracked: dict[int, list[_Tracked]] = {}
    online_ids = set(ids)
    for m in reported:
        if m.pk in online_ids:
            ghosts = classify(m, rule.allowed_names, jobs.get(m.pk, []))
            tracked[m.pk] = _track(m, ghosts, now, known.get(m.pk, {}), writes)
    writes.flush()
    for m in reported:
        key = f"machine:{m.pk}:ghosts"
        if m.pk not in tracked:
            verdict.unknown.add(key)
            continue
        old = [g for g in tracked[m.pk] if now - g.first_seen_at >= wait and (g.mem_used_bytes or 0) > 0]
        if old:
            verdict.firing.append(Finding(key, _summary(m, old, rule.threshold), m.pk))
    return verdict


# ---- the operator's confirmation and the worker's side ----------------------------------------


def confirm_cleanup(user: Any, machine: Machine, pgid: int) -> CleanupRequest:
    """Ask ``machine``'s worker to stop process group ``pgid``, left behind by a job that ended there."""
    ghosts = list(
        GhostProcess.objects.filter(machine=machine, pgid=pgid, reason=GhostProcess.Reason.ORPHANED).select_related(
            "job"
        )
    )
    if not ghosts or ghosts[0].job is None:
        raise CleanupError(f"no ended job's processes in group {pgid} on {machine.name}: nothing to clean up", 404)
    job = ghosts[0].job
    if not can_cancel(user, job):
        raise CleanupError("only the job's owner (an operator) or an admin may confirm its cleanup", 403)
    if not JobAttempt.objects.filter(job=job, machine=machine).exists():
        raise CleanupError(f"job #{job.pk} never ran on {machine.name}", 409)
    try:
        with transaction.atomic():
            request = CleanupRequest.objects.create(
                machine=machine,
                job=job,
                pgid=pgid,
                pids=[g.pid for g in ghosts],
                mem_used_bytes=sum(g.mem_used_bytes or 0 for g in ghosts),
                confirmed_by=user,
            )
            audit(
                user,
                "ghost.cleanup_confirm",
                job,
                machine=machine.name,
                pgid=pgid,
                pids=request.pids,
                mem_used_bytes=request.mem_used_bytes,
                request=request.pk,
            )
    except IntegrityError:
        raise CleanupError(
            f"a cleanup of group {pgid} on {machine.name} is already waiting for the worker", 409
        ) from None
    return request


def pending_cleanups(machine: Machine) -> list[dict[str, Any]]:
    """What ``machine``'s worker should stop: confirmed requests, oldest first."""
    return [
        {"id": r.pk, "pgid": r.pgid, "pids": r.pids, "job_id": r.job_id}
        for r in CleanupRequest.objects.filter(machine=machine, status=CleanupRequest.Status.CONFIRMED).order_by("pk")
    ]


def report_cleanup(machine: Machine, request_id: int, outcome: str, message: str = "") -> CleanupRequest:
    """The worker's answer: ``done`` (it stopped the group), ``refused`` (not a job it ran) or ``gone``."""
    if outcome not in (CleanupRequest.Status.DONE, CleanupRequest.Status.REFUSED, CleanupRequest.Status.GONE):
        raise CleanupError("outcome: one of done, refused, gone")
    with transaction.atomic():
        request = CleanupRequest.objects.select_for_update().filter(pk=request_id, machine=machine).first()
        if request is None:
            raise CleanupError("no such cleanup request for this machine", 404)
        if request.status != CleanupRequest.Status.CONFIRMED:
            return request  # a repeated report changes nothing
        request.status, request.finished_at, request.message = outcome, timezone.now(), message[:500]
        request.save(update_fields=["status", "finished_at", "message"])
        audit(
            None,
            f"ghost.cleanup_{outcome}",
            request.job,
            machine=machine.name,
            pgid=request.pgid,
            request=request.pk,
            message=request.message,
        )
    return request
