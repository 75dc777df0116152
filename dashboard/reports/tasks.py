"""Celery tasks of the reports app; the logic is in ``scheduled``, which tests call directly."""

from __future__ import annotations

from celery import shared_task

from . import scheduled


@shared_task(name="dashboard.reports.tasks.weekly_reports", ignore_result=True, time_limit=900, soft_time_limit=840)
def weekly_reports() -> dict[str, int]:
    """Beat runs this every 15 minutes: a week's reports are written once, then sent (and retried) until out."""
    return scheduled.run()
