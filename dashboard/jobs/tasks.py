"""Celery tasks of the jobs app: placement, and lost-worker detection. Logic lives in plain modules."""

from __future__ import annotations

from celery import shared_task

from dashboard.celery import app
from hwprobe import progress
from hwprobe.worker import RUN_TASK

from . import placement, service
from .models import Job

# Names the worker understands in `progress_pattern` besides a regular expression with a
# (?P<tokens>...) group: the agent's own list, so the two sides cannot drift apart.
PROGRESS_PRESETS = progress.PRESETS


def machine_queue(name: str) -> str:
    return f"machine.{name}"


def spec(job: Job) -> dict:
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
        "metrics_url": job.metrics_url or None,
        "progress_pattern": job.progress_pattern or None,
    }


def dispatch(job_id: int, attempt: int) -> None:
    job = Job.objects.select_related("machine").get(pk=job_id)
    app.send_task(
        RUN_TASK,
        kwargs={"job_id": job.pk, "attempt": attempt, "spec": spec(job)},
        queue=machine_queue(job.machine.name),
    )


@shared_task(name=service.PLACE_TASK, ignore_result=True, time_limit=120)
def place() -> int:
    """Place what fits and send each placed job to its machine's queue."""
    placed = placement.place_queued()
    for p in placed:
        dispatch(p.job_id, p.attempt)
    return len(placed)


@shared_task(name="dashboard.jobs.tasks.check_lost", ignore_result=True, time_limit=120)
def check_lost() -> int:
    lost = service.mark_lost()
    if lost:
        place.delay()
    return len(lost)
