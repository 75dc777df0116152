"""Celery tasks of the alerts app; the logic is in ``evaluate`` and ``webhooks``, which tests call directly."""

from __future__ import annotations

from celery import shared_task

from . import evaluate as evaluation
from . import webhooks


@shared_task(name="dashboard.alerts.tasks.evaluate", ignore_result=True, time_limit=120, soft_time_limit=100)
def evaluate() -> dict[str, int]:
    """Beat runs this every 30 s; an open alert is never fired twice, so overlapping runs are harmless."""
    return evaluation.evaluate()


@shared_task(name="dashboard.alerts.tasks.deliver", ignore_result=True, time_limit=180, soft_time_limit=150)
def deliver() -> int:
    """Beat runs this every 15 s; each delivery is claimed before it is sent."""
    return webhooks.deliver_due()
