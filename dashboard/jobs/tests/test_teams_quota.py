"""Quotas and borrowing through placement: a team at quota waits or borrows idle GPUs with a
preemptible job, and gets its own GPUs back by preempting borrowers (dashboard/teams/quota.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from dashboard.fleet.models import MachineState
from dashboard.jobs import service
from dashboard.jobs.models import Job, JobAttempt
from dashboard.jobs.placement import place_queued
from dashboard.teams import quota
from dashboard.teams import service as teams_service

from .conftest import online

pytestmark = pytest.mark.django_db


def job(user, team, name, gpus=1, mem=30.0, preemptible=False, **kw) -> Job:
    return Job.objects.create(
        owner=user,
        team=team,
        name=name,
        kind="train",
        argv=["true"],
        gpus=gpus,
        gpu_memory_gb=mem,
        preemptible=preemptible,
        **kw,
    )


def running(*jobs: Job) -> None:
    Job.objects.filter(pk__in=[j.pk for j in jobs]).update(status="running", started_at=timezone.now())
    JobAttempt.objects.filter(job__in=jobs).update(started_at=timezone.now())


def fresh(j: Job) -> Job:
    return Job.objects.get(pk=j.pk)


@pytest.fixture
def fleet(team_a, team_b):
    teams_service.update_team(None, team_a, gpu_quota=1)
    return online("a-box", team_a), online("b-box", team_b)


def test_a_job_over_its_teams_gpu_quota_waits_and_says_why(fleet, owner, team_a):
    first, second = job(owner, team_a, "first"), job(owner, team_a, "second")
    place_queued()
    assert fresh(first).status == "placed" and not fresh(first).borrowing
    assert fresh(second).status == "queued"
    assert fresh(second).status_message == (
        "over quota: team team-a holds 1 of its 1 GPUs; this job needs 1 more; a preemptible job could borrow idle GPUs"
    )


def test_a_preemptible_job_over_quota_borrows_another_teams_idle_gpu(fleet, owner, team_a):
    a_box, b_box = fleet
    job(owner, team_a, "first")
    borrower = job(owner, team_a, "borrower", preemptible=True)
    place_queued()
    borrower = fresh(borrower)
    assert borrower.status == "placed" and borrower.machine == b_box and borrower.borrowing
    assert "borrowing" in borrower.status_message


def test_the_owning_team_takes_its_gpu_back_from_the_borrower(fleet, owner, stranger, team_a, team_b):
    a_box, b_box = fleet
    mine = job(owner, team_a, "first")
    borrower = job(owner, team_a, "borrower", preemptible=True)
    place_queued()
    running(mine, borrower)
    theirs = job(stranger, team_b, "theirs")
    place_queued()
    assert fresh(borrower).preempt_requested
    assert fresh(theirs).status == "queued"
    assert fresh(theirs).status_message.endswith(f"preempting borrowing job(s) #{borrower.pk}")
    # The worker stops it (SIGTERM: the job checkpoints) and reports; it goes back to the queue.
    service.finish(b_box, borrower.pk, 1, "preempted", -15, "preempted")
    assert fresh(borrower).status == "queued"
    assert fresh(borrower).status_message == "preempted: its team's borrowed GPUs were needed back; queued to resume"
    place_queued()
    assert fresh(theirs).status == "placed" and fresh(theirs).machine == b_box and not fresh(theirs).borrowing
    assert fresh(borrower).status == "queued"
    assert "over its team's quota, it may only borrow idle GPUs" in fresh(borrower).status_message


def test_a_job_that_is_not_preemptible_never_runs_on_another_teams_machine(team_b, stranger, owner, team_a):
    online("b-box", team_b)
    j = job(owner, team_a, "j")
    place_queued()
    assert fresh(j).status == "queued"
    assert fresh(j).status_message == (
        "needs 1 GPU × 30 GiB; at most 1 GPU(s) with 30 GiB free, on b-box; "
        "those machines belong to other teams, which lend only to preemptible jobs"
    )


def test_in_quota_jobs_are_placed_before_borrowers_in_the_same_pass(team_a, team_b, owner, stranger):
    teams_service.update_team(None, team_a, gpu_quota=0)
    online("pool-box")
    borrower = job(owner, team_a, "borrower", preemptible=True, priority=5)
    theirs = job(stranger, team_b, "theirs")
    place_queued()
    assert fresh(theirs).status == "placed"
    assert fresh(borrower).status == "queued"


def test_gpu_hours_used_this_period_count_against_the_quota(team_a, owner):
    teams_service.update_team(None, team_a, gpu_hours_quota=2, quota_period="month")
    # Placed at least 2 h into the month whatever the clock says: an hour run before midnight on the
    # 1st belongs to the month before (this test failed at 00:05 UTC on 1 December).
    wall = timezone.now()
    now = max(wall, quota.period_start(team_a, wall) + timedelta(hours=2))
    box = online("pool-box", gpus=2)
    MachineState.objects.filter(machine=box).update(last_seen_at=now)
    done = job(owner, team_a, "done", gpus=2)
    start = now - timedelta(minutes=61)
    Job.objects.filter(pk=done.pk).update(status="succeeded")
    JobAttempt.objects.create(job=done, number=1, gpus=[0, 1], started_at=start, ended_at=start + timedelta(hours=1))
    j = job(owner, team_a, "next")
    place_queued(now)
    assert fresh(j).status == "queued"
    assert fresh(j).status_message.startswith("over quota: team team-a used 2.0 of its 2 GPU-hours this month")


def test_every_change_to_a_team_its_members_and_quotas_is_audited(team_a, owner, admin_user):
    from dashboard.jobs.models import AuditEvent

    teams_service.update_team(admin_user, team_a, gpu_quota=4, share=2.0)
    teams_service.set_role(admin_user, team_a, owner, "admin")
    teams_service.remove_member(admin_user, owner.memberships.get())
    events = list(AuditEvent.objects.order_by("pk").values_list("action", "actor__username", "detail"))
    assert events[:2] == [
        ("team.create", None, {"team": "team-a", "name": "Team A"}),
        ("team.member_add", None, {"team": "team-a", "user": "alice", "role": "operator", "source": ""}),
    ]
    assert events[2:] == [
        ("team.quota", "admin", {"team": "team-a", "changes": {"gpu_quota": [None, 4], "share": [1.0, 2.0]}}),
        ("team.role", "admin", {"team": "team-a", "user": "alice", "role": ["operator", "admin"], "source": ""}),
        ("team.member_remove", "admin", {"team": "team-a", "user": "alice", "role": "admin", "source": ""}),
    ]
