"""Formatting of jobs for people: durations, GPU lists, times the browser shows in its own zone."""

from __future__ import annotations

from datetime import UTC

from django import template
from django.utils.html import format_html

from .. import masking
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
    seconds = job.run_seconds()
    return "–" if seconds is None else _seconds(seconds)


@register.filter
def gpu_list(indexes: list[int] | None) -> str:
    """'GPU 0, 1'; '' for none."""
    return f"GPU {', '.join(map(str, indexes))}" if indexes else ""


@register.filter
def local_time(moment) -> str:
    """A <time> element: UTC text for reading without JavaScript; static/js/jobs.js shows it in the browser's zone."""
    if moment is None:
        return "–"
    utc = moment.astimezone(UTC)
    return format_html('<time datetime="{}">{} UTC</time>', utc.isoformat(), utc.strftime("%Y-%m-%d %H:%M:%S"))


# The tokens a job is about: what training consumes, what serving generates.
MAIN_TOKEN_KIND = {Job.Kind.TRAIN: "train", Job.Kind.SERVE: "generated"}


@register.filter
def main_throughput(job: Job) -> dict | None:
    """The jobs list's cell: the summary of the job's main kind of tokens (set by the view), None without any."""
    summary = (getattr(job, "throughput_summary", None) or {}).get(MAIN_TOKEN_KIND.get(job.kind, "train"))
    return summary if summary and summary["total_tokens"] else None


@register.filter
def env_for(job: Job, user) -> list[tuple[str, str]]:
    """The job's environment as ``user`` may read it, as (name, value) pairs: secrets masked (jobs/masking.py)."""
    return list(masking.env_for(user, job).items())
