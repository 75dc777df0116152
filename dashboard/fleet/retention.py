"""Deleting telemetry past its age: raw windows after days, minute rollups after months, hours never.

Token rollups (``ThroughputRollup``) follow the minute and hour rollups' ages.

Ages come from settings (``RETENTION_*_DAYS``; 0 keeps rows forever). Cut-offs fall on whole hours,
so an hour's raw windows go all at once and a late window can never leave an hour half-purged.
Raw rows the rollups have not reached yet (received after the rollup watermark, less its margin)
are kept whatever their age: a spool replayed after weeks offline is rolled up before it goes.
Rows go in batches of ``BATCH`` per statement, so no delete holds its locks for long. On
PostgreSQL the raw tables are partitioned by day (partitions.py): whole days past their age are
dropped as partitions, and only the day the cut-off falls in (and the default partition) is
deleted row by row.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Model, QuerySet
from django.utils import timezone

from dashboard.core.periods import window_filter

from . import partitions
from .models import (
    GpuRollup,
    GpuSample,
    RollupState,
    SystemRollup,
    SystemSample,
    ThroughputRollup,
    ThroughputSample,
)
from .rollup import HOUR, MARGIN, MINUTE, floor_to

BATCH = 10_000


def cutoff(now: datetime, days: int) -> datetime | None:
    """The start of the hour ``days`` days before ``now``: older rows go; None when kept forever."""
    if days <= 0:
        return None
    return floor_to(now - timedelta(days=days), HOUR)


def _delete(model: type[Model], qs: QuerySet) -> int:
    deleted = 0
    while True:
        ids = list(qs.values_list("pk", flat=True)[:BATCH])
        if not ids:
            return deleted
        deleted += model.objects.filter(pk__in=ids).delete()[0]


def purge(now: datetime | None = None) -> dict[str, int]:
    """Delete what is past its age; return the rows deleted per table."""
    now = now or timezone.now()
    done: dict[str, int] = {}

    raw = cutoff(now, settings.RETENTION_RAW_DAYS)
    state = RollupState.objects.filter(name="rollup").first()
    split = partitions.enabled()
    if raw is not None and state is not None:  # no watermark: nothing has been rolled up yet
        rolled_up = state.watermark - MARGIN
        for model in (SystemSample, GpuSample):
            if split:  # a day that ended before the watermark was received before it, and rolled up
                done[f"{model._meta.model_name}_days"] = partitions.drop_before(
                    model._meta.db_table, min(raw, rolled_up)
                )
            done[model._meta.model_name] = _delete(model, model.objects.filter(ts__lt=raw, received_at__lt=rolled_up))

    if raw is not None:  # token counts keep their windows; their 1 s points go with the raw windows
        # Only the last week before the cut-off: the hourly run has cleared what is older, and a
        # scan of every older partition each hour would grow with the kept history.
        recent = window_filter(raw - timedelta(days=7), raw)
        old = ThroughputSample.objects.filter(**recent, points__isnull=False)
        done["throughputsample_points"] = 0
        while ids := list(old.values_list("pk", flat=True)[:BATCH]):
            done["throughputsample_points"] += ThroughputSample.objects.filter(pk__in=ids).update(points=None)

    tokens = cutoff(now, settings.RETENTION_THROUGHPUT_DAYS)
    if tokens is not None:
        if split:
            done["throughputsample_days"] = partitions.drop_before(ThroughputSample._meta.db_table, tokens)
        done["throughputsample"] = _delete(ThroughputSample, ThroughputSample.objects.filter(ts__lt=tokens))

    for resolution, days in ((MINUTE, settings.RETENTION_MINUTE_DAYS), (HOUR, settings.RETENTION_HOUR_DAYS)):
        edge = cutoff(now, days)
        if edge is None:
            continue
        for model in (SystemRollup, GpuRollup, ThroughputRollup):
            qs = model.objects.filter(resolution_s=resolution, bucket__lt=edge)
            done[f"{model._meta.model_name}_{resolution}s"] = _delete(model, qs)
    return done
