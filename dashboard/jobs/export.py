"""The jobs list as CSV: what the list shows and what accounting asks next (GPU-hours held,
attempts, exit code, tokens), for every job the list's filters select, not only its first page."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from django.utils import timezone

from .models import Job

MAX_ROWS = 10_000  # the newest first; past it the file says so in its last row
# The token kind that is a job's output, as on the list (jobs/templatetags/job_format.py).
MAIN_KIND = {Job.Kind.TRAIN: "train", Job.Kind.SERVE: "generated"}

HEADER = [
    "id", "name", "kind", "status", "team", "owner", "machine", "gpus", "gpu_memory_gib", "assigned_gpus",
    "created", "started", "finished", "run_s", "attempts", "gpu_hours_held", "exit_code",
    "tokens_kind", "tokens", "mean_tokens_per_s", "median_tokens_per_s", "peak_tokens_per_s", "status_message",
]  # fmt: skip


def job_rows(jobs: Iterable[Job], summaries: dict[int, dict[str, Any]], now: datetime) -> Iterator[list[Any]]:
    """The header, then a row per job (None cells: csv.writer writes them empty). ``jobs`` come
    with their attempts prefetched; times are ISO 8601 in the active zone; ``gpu_hours_held`` adds
    each attempt's GPUs x its time holding them (to ``now`` for the one running); ``run_s`` is the
    list's duration (first start to finish)."""
    zone = timezone.get_current_timezone()
    yield HEADER
    for job in jobs:
        held = 0.0
        for a in job.attempts.all():
            if a.started_at is not None:
                held += len(a.gpus or []) * ((a.ended_at or now) - a.started_at).total_seconds() / 3600
        kind = MAIN_KIND.get(job.kind, "train")
        figures = (summaries.get(job.pk) or {}).get(kind) or {}
        yield [
            job.pk,
            job.name,
            job.kind,
            job.status,
            job.team.slug if job.team_id else "",
            job.owner.get_username(),
            job.machine.name if job.machine_id else "",
            job.gpus,
            job.gpu_memory_gb,
            " ".join(map(str, job.assigned_gpus or [])),
            _iso(job.created_at, zone),
            _iso(job.started_at, zone),
            _iso(job.finished_at, zone),
            None if (run := job.run_seconds(now)) is None else round(run, 1),
            len(job.attempts.all()),
            round(held, 4),
            job.exit_code,
            kind,
            figures.get("total_tokens", 0),
            figures.get("mean_tokens_per_s"),
            figures.get("median_tokens_per_s"),
            figures.get("peak_tokens_per_s"),
            job.status_message,
        ]


def _iso(t: datetime | None, zone: Any) -> str:
    return t.astimezone(zone).isoformat() if t else ""
