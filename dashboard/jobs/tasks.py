"""Celery tasks of the jobs app: placement, and the check of running work. Logic lives in plain modules.

Celery stays on the server: hosts take their jobs over HTTPS (``POST /api/v1/agent/jobs/next``),
so placement only writes the database and wakes the machines' long-polls (:mod:`.wakeup`).
"""

from __future__ import annotations

from celery import shared_task

from hwprobe import progress

from . import placement, service, wakeup
from .models import Job

# Names the worker understands in `progress_pattern` besides a regular expression with a
# (?P<tokens>...) group: the agent's own list, so the two sides cannot drift apart.
PROGRESS_PRESETS = progress.PRESETS


@shared_task(name=service.PLACE_TASK, ignore_result=True, time_limit=120)
def place() -> int:
    """Place what fits and wake the long-polls of the machines that got a job."""
    placed = placement.place_queued()
    if placed:
        machines = Job.objects.filter(pk__in=[p.job_id for p in placed]).values_list("machine_id", flat=True)
        wakeup.notify(m for m in machines if m is not None)
    return len(placed)


@shared_task(name="dashboard.jobs.tasks.check_lost", ignore_result=True, time_limit=120)
def check_lost() -> int:
    """Running jobs gone quiet become unreachable, then lost (service.mark_lost); old idempotency keys go."""
    lost = service.mark_lost()
    service.forget_idempotency_keys()
    if lost:
        service.after_commit_place()  # outside a transaction: sent at once; never raises
    return len(lost)
