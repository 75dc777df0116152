"""What a rule check returns, and the reads every check shares (machines, devices, a span of windows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Avg, Count, Max, Min, QuerySet

from dashboard.core.periods import window_filter
from dashboard.fleet.models import GpuSample, Machine
from dashboard.fleet.queries import devices

from .models import AlertRule

# A span may start this much after the window's start (an agent's first window, a short gap).
COVERAGE_SLACK = timedelta(seconds=60)


@dataclass(frozen=True)
class Finding:
    key: str
    message: str
    machine_id: int | None = None
    gpu_index: int | None = None
    job_id: int | None = None


@dataclass
class Verdict:
    firing: list[Finding] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)


def machines(rule: AlertRule) -> QuerySet[Machine]:
    found = Machine.objects.order_by("name")
    return found.filter(pk=rule.machine_id) if rule.machine_id else found


def gpu_rows(machine: Machine, physical_only: bool = True) -> list[dict[str, Any]]:
    """The machine's devices joined with its newest window; whole GPUs only unless told otherwise."""
    rows = devices(list(machine.accelerators.all()), machine.latest)
    return [r for r in rows if not (physical_only and r.get("parent_uuid"))]


@dataclass(frozen=True)
class Span:
    """Raw windows of one GPU over ``[since, now]``: how many had the column, its mean and max."""

    windows: int
    mean: float | None
    top: float | None
    first: datetime | None

    def covers(self, since: datetime, span: timedelta) -> bool:
        """Whether the windows reach back to the span's start (give or take a window)."""
        slack = min(COVERAGE_SLACK, span / 4)
        return bool(self.windows) and self.first is not None and self.first - since <= slack


def span(machine_id: int, gpu_index: int, since: datetime, now: datetime, column: str) -> Span:
    """Window means of ``column`` (a gauge, e.g. ``util_percent``) over a GPU's windows in ``[since, now)``."""
    name = f"{column}_mean"
    seen = GpuSample.objects.filter(
        machine_id=machine_id, gpu_index=gpu_index, **window_filter(since, now), **{f"{name}__isnull": False}
    ).aggregate(n=Count(name), mean=Avg(name), top=Max(name), first=Min("ts"))
    return Span(seen["n"], seen["mean"], seen["top"], seen["first"])
