"""Read-side functions shared by the jobs API and pages."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from . import masking, throughput
from .models import Job, JobLog


def job_list(
    status: str | None = None, machine: str | None = None, kind: str | None = None, owner: str | None = None
) -> QuerySet[Job]:
    qs = Job.objects.select_related("owner", "machine", "target", "team").order_by("-created_at", "-pk")
    if status:
        qs = qs.filter(status=status)
    if machine:
        qs = qs.filter(machine__name=machine)
    if kind:
        qs = qs.filter(kind=kind)
    if owner:
        qs = qs.filter(owner__username=owner)
    return qs


def _iso(t) -> str | None:
    return t.isoformat() if t else None


def job_dict(job: Job, attempts: bool = False, viewer: Any = None) -> dict[str, Any]:
    """The job as ``viewer`` may read it: secret values masked unless they own it or are an admin."""
    out: dict[str, Any] = {
        "id": job.pk,
        "name": job.name,
        "kind": job.kind,
        "command": job.shell or job.argv,
        "workdir": job.workdir,
        "env": masking.env_for(viewer, job),
        "secret_env": job.secret_env or [],
        "gpus": job.gpus,
        "gpu_memory_gb": job.gpu_memory_gb,
        "machine": job.machine.name if job.machine else None,
        "target": job.target.name if job.target else None,
        "priority": job.priority,
        "max_runtime_s": job.max_runtime_s,
        "preemptible": job.preemptible,
        "metrics_url": job.metrics_url or None,
        "progress_pattern": job.progress_pattern or None,
        "model_params_b": job.model_params_b,
        "precision": job.precision or None,
        "context_tokens": job.context_tokens,
        "owner": job.owner.get_username(),
        "team": job.team.slug,
        "borrowing": job.borrowing,
        "status": job.status,
        "status_message": job.status_message,
        "exit_code": job.exit_code,
        "assigned_gpus": job.assigned_gpus,
        "attempt": job.attempt,
        "created_at": _iso(job.created_at),
        "placed_at": _iso(job.placed_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }
    if attempts:
        out["throughput"] = throughput.job_summary(job)
        out["attempts"] = [
            {
                "number": a.number,
                "machine": a.machine.name if a.machine else None,
                "gpus": a.gpus,
                "placed_at": _iso(a.placed_at),
                "started_at": _iso(a.started_at),
                "ended_at": _iso(a.ended_at),
                "outcome": a.outcome,
                "exit_code": a.exit_code,
                "message": a.message,
            }
            for a in job.attempts.select_related("machine")
        ]
    return out


def job_span(job: Job) -> tuple[datetime, datetime]:
    """The job's running time with a minute either side, or the last hour if it has not run."""
    now = timezone.now()
    if job.started_at is None:
        return now - timedelta(hours=1), now
    return job.started_at - timedelta(minutes=1), (job.finished_at or now) + timedelta(minutes=1)


def job_log(job: Job, after: int = 0, limit: int = 2000, viewer: Any = None) -> dict[str, Any]:
    """Chunks with an id above ``after``, oldest first: the page asks again with the last id.

    Secret values of the job's environment are masked in the text unless ``viewer`` may read them."""
    chunks = list(JobLog.objects.filter(job=job, pk__gt=after).order_by("pk")[:limit])
    return {
        "job": job.pk,
        "status": job.status,
        "chunks": [
            {
                "id": c.pk,
                "attempt": c.attempt,
                "stream": c.stream,
                "text": masking.log_for(viewer, job, c.text),
                "ts": c.ts.timestamp(),
            }
            for c in chunks
        ],
        "last_id": chunks[-1].pk if chunks else after,
    }


def job_gpu_processes(job: Job) -> dict[str, Any] | None:
    """The GPU processes of a running job, from its machine's latest telemetry.

    The worker starts each job in a process group of its own and reports the group's id in its
    heartbeats; the agent reports each GPU process with its group. Matching the two traces a
    GPU's memory to the job that holds it, children of the job's command included.
    """
    if job.status != Job.Status.RUNNING or job.pgid is None or job.machine is None:
        return None
    latest = job.machine.latest or {}
    processes = []
    for gpu in latest.get("gpus", []):
        for proc in gpu.get("processes") or ():
            if proc.get("pgid") == job.pgid:
                processes.append({"gpu": gpu["index"], **proc})
    total = sum(p["mem_used_bytes"] or 0 for p in processes)
    return {"processes": processes, "mem_used_bytes": total, "ts": latest.get("ts")}
