"""Each team's usage as placement needs it: GPUs held and GPU-hours this quota period
(``dashboard.teams.quota``), and decayed usage for the fair-share order (``dashboard.teams.fairshare``).

Usage is allocation: an attempt holds its GPUs from its start to its end (or now).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q

from dashboard.teams import fairshare, quota
from dashboard.teams.models import Team

from .models import Job, JobAttempt

# Beyond this many half-lives an attempt weighs under 0.1 % in the fair-share sum: not worth reading.
LOOKBACK_HALF_LIVES = 10


def spans(since: datetime, team_ids: Iterable[int] | None = None) -> list[fairshare.Span]:
    """GPU holdings of attempts that started and had not ended before ``since``."""
    qs = JobAttempt.objects.filter(started_at__isnull=False).filter(Q(ended_at__isnull=True) | Q(ended_at__gt=since))
    if team_ids is not None:
        qs = qs.filter(job__team_id__in=list(team_ids))
    return [
        fairshare.Span(team_id, len(gpus or []), started, ended)
        for team_id, gpus, started, ended in qs.values_list("job__team_id", "gpus", "started_at", "ended_at")
    ]


def fair_share(now: datetime) -> dict[int, float]:
    """Team id -> fair-share factor F for every team."""
    half_life = settings.FAIRSHARE_HALF_LIFE_S
    usage = fairshare.decayed_usage(spans(now - timedelta(seconds=half_life * LOOKBACK_HALF_LIVES)), now, half_life)
    shares = dict(Team.objects.values_list("pk", "share"))
    return fairshare.factors(shares, usage)


def quota_usage(teams: Iterable[Team], now: datetime) -> dict[int, quota.Usage]:
    """Team id -> GPUs its non-borrowing active jobs hold, and GPU-seconds used this quota period."""
    teams = {t.pk: t for t in teams}
    out = {pk: quota.Usage() for pk in teams}
    held = Job.objects.filter(team_id__in=list(teams), status__in=Job.ACTIVE, borrowing=False)
    for team_id, gpus in held.values_list("team_id", "gpus"):
        out[team_id].gpus += gpus
    limited = {pk: quota.period_start(t, now) for pk, t in teams.items() if t.gpu_hours_quota is not None}
    if limited:
        for s in spans(min(limited.values()), limited):
            start = max(s.start, limited[s.team_id])
            end = min(s.end or now, now)
            if end > start:
                out[s.team_id].gpu_seconds += s.gpus * (end - start).total_seconds()
    return out
