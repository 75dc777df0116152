from celery import shared_task

from . import rollup as rollups


@shared_task(name="dashboard.fleet.tasks.rollup", ignore_result=True, time_limit=300, soft_time_limit=240)
def rollup() -> int:
    """Beat runs this every 30 s; catch_up() is idempotent, so overlapping runs are harmless."""
    return rollups.catch_up()
