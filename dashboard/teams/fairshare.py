"""Fair share: which team's queued job goes first among jobs of equal priority.

As Slurm's classic fair-share factor, with usage decayed by a half-life:

    F = 2^(-U / S)

- ``U`` is the team's share of the fleet's recent usage, ``U = u_team / Σ u_all`` (0 when nobody
  used anything), where ``u`` is GPU-seconds decayed with half-life ``H`` (FAIRSHARE_HALF_LIFE_S):
  a job attempt that held ``g`` GPUs from ``t0`` to ``t1`` (or until now) adds
  ``g · ∫ 2^(-(now - t)/H) dt over [t0, t1]`` ``= g · H/ln 2 · (2^(-(now - t1)/H) - 2^(-(now - t0)/H))``;
  a GPU-second ``H`` ago counts half, ``2H`` ago a quarter.
- ``S`` is the team's normalised share, ``S = share_team / Σ share_all``.

F is 1 for a team that used nothing, 0.5 for one that used exactly its share, and tends to 0 for
one far over it. Queued jobs are ordered by priority (higher first), then F (higher first), then
submission time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Span:
    """GPUs held by one team from ``start`` to ``end`` (None: still held)."""

    team_id: int
    gpus: int
    start: datetime
    end: datetime | None


def decayed_gpu_seconds(gpus: int, start: datetime, end: datetime, now: datetime, half_life_s: float) -> float:
    """``gpus · ∫ 2^(-(now - t)/H) dt`` over ``[start, end]``: GPU-seconds, older ones worth less."""
    if end <= start or gpus <= 0:
        return 0.0
    age_end = max(0.0, (now - end).total_seconds())
    age_start = max(0.0, (now - start).total_seconds())
    k = math.log(2) / half_life_s
    return gpus * (math.exp(-k * age_end) - math.exp(-k * age_start)) / k


def decayed_usage(spans: Iterable[Span], now: datetime, half_life_s: float) -> dict[int, float]:
    """Team id -> decayed GPU-seconds."""
    usage: dict[int, float] = {}
    for s in spans:
        end = min(s.end or now, now)
        usage[s.team_id] = usage.get(s.team_id, 0.0) + decayed_gpu_seconds(s.gpus, s.start, end, now, half_life_s)
    return usage


def factors(shares: dict[int, float], usage: dict[int, float]) -> dict[int, float]:
    """Team id -> F = 2^(-U/S) for every team in ``shares`` (team id -> raw share)."""
    total_share = sum(shares.values())
    total_usage = sum(usage.get(t, 0.0) for t in shares)
    out = {}
    for team, share in shares.items():
        u = usage.get(team, 0.0) / total_usage if total_usage > 0 else 0.0
        s = share / total_share if total_share > 0 else 0.0
        out[team] = 2 ** (-u / s) if s > 0 else 0.0
    return out
