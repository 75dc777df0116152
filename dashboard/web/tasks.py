"""Celery tasks of the web app; the logic is in the modules they name, which tests call directly."""

from __future__ import annotations

from celery import shared_task

from . import efficiency


@shared_task(name="dashboard.web.tasks.refresh_ranking", ignore_result=True, time_limit=120, soft_time_limit=100)
def refresh_ranking() -> int:
    """Beat runs this every minute: the fleet page's busy-but-inefficient GPUs, into the cache."""
    return efficiency.refresh_ranking()
