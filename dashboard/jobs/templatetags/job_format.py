"""Formatting of jobs for people: durations, status badges, GPU lists."""

from __future__ import annotations

from django import template
from django.utils import timezone

from ..models import Job

register = template.Library()


def _seconds(total: float) -> str:
    s = max(0, round(total))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


@register.filter
def duration(job: Job) -> str:
    """Run time so far: from start to finish, or to now while it runs; '–' before it starts.

    static/js/jobs.js formats a running job's time the same way.
    """
    if job.started_at is None:
        return "–"
    end = job.finished_at or timezone.now()
    return _seconds((end - job.started_at).total_seconds())


@register.filter
def gpu_list(indexes: list[int] | None) -> str:
    """'GPU 0, 1'; '' for none."""
    return f"GPU {', '.join(map(str, indexes))}" if indexes else ""
