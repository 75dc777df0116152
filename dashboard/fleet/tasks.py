from celery import shared_task

from . import partitions
from . import retention as retention_module
from . import rollup as rollups


@shared_task(name="dashboard.fleet.tasks.rollup", ignore_result=True, time_limit=300, soft_time_limit=240)
def rollup() -> int:
    """Beat runs this every 30 s; catch_up() is idempotent, so overlapping runs are harmless."""
    return rollups.catch_up()


@shared_task(name="dashboard.fleet.tasks.retention", ignore_result=True, time_limit=3600, soft_time_limit=3300)
def retention() -> dict[str, int]:
    """Beat runs this hourly: creates the coming days' partitions of the raw tables (PostgreSQL),
    then deletes telemetry past its age (see retention.py); safe to repeat."""
    created = partitions.ensure()
    return {**retention_module.purge(), "partitions_created": created}
