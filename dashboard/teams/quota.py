"""Quotas and borrowing: whether a queued job runs as its team's own, as a borrower, or waits.

A team may hold at most ``gpu_quota`` GPUs at once and use ``gpu_hours_quota`` GPU-hours per
calendar ``quota_period`` (allocated hours: attempt spans × GPUs, as chargeback counts them);
empty means no limit. A job that would pass a limit waits and says why, unless it is preemptible:
then it may run on idle capacity as a *borrower*. A job placed on a machine that another team
owns is a borrower too (and so must be preemptible). Borrowers hold no share: when a job of the
team that owns the machine (or, on the shared pool, any team still within its quota) finds no room,
placement preempts borrowers of other teams to make it (checkpoint, requeue), and borrowers are
placed only after every in-quota job of the same pass.

Plain functions over plain numbers: ``dashboard.jobs.placement`` gathers the usage and calls them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dashboard.core.periods import resolve_period

from .models import Team


@dataclass
class Usage:
    """What a team holds now and has used this quota period."""

    gpus: int = 0  # GPUs held by its active jobs that are not borrowing
    gpu_seconds: float = 0.0  # allocated GPU-seconds since the start of its quota period


@dataclass(frozen=True)
class Decision:
    borrow: bool = False  # over quota: may run only as a preemptible borrower
    wait: str = ""  # why it may not run at all (empty: it may)


OWN, BORROW = "own", "borrow"


def period_start(team: Team, now: datetime) -> datetime:
    """Start of the team's current quota period (a calendar day, week or month, server time zone)."""
    return resolve_period({"period": team.quota_period}, now).start


def over_quota(team: Team, usage: Usage, gpus: int) -> str:
    """Why a job of ``gpus`` GPUs would pass the team's quota, or '' if it would not."""
    if gpus <= 0:
        return ""
    if team.gpu_hours_quota is not None and usage.gpu_seconds >= team.gpu_hours_quota * 3600:
        return (
            f"team {team.slug} used {usage.gpu_seconds / 3600:.1f} of its {team.gpu_hours_quota:g} GPU-hours "
            f"this {team.quota_period}"
        )
    if team.gpu_quota is not None and usage.gpus + gpus > team.gpu_quota:
        return f"team {team.slug} holds {usage.gpus} of its {team.gpu_quota} GPUs; this job needs {gpus} more"
    return ""


def decide(team: Team, usage: Usage, gpus: int, preemptible: bool) -> Decision:
    reason = over_quota(team, usage, gpus)
    if not reason:
        return Decision()
    if preemptible:
        return Decision(borrow=True)
    return Decision(wait=f"over quota: {reason}; a preemptible job could borrow idle GPUs")


def machine_use(job_team_id: int, machine_team_id: int | None, decision: Decision, preemptible: bool) -> str | None:
    """How a job may use a machine: as its team's own (OWN), as a borrower (BORROW), or not (None)."""
    if decision.wait:
        return None
    own_machine = machine_team_id is None or machine_team_id == job_team_id
    if own_machine and not decision.borrow:
        return OWN
    return BORROW if preemptible else None


def may_preempt(victim_team_id: int, victim_borrowing: bool, claimant_team_id: int, claimant_use: str) -> bool:
    """Whether an in-quota job (``claimant_use`` OWN) may take back what a borrower holds."""
    return claimant_use == OWN and victim_borrowing and victim_team_id != claimant_team_id
