"""Placement orders queued jobs of equal priority by the fair-share factor (dashboard/teams/fairshare.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dashboard.jobs.models import Job, JobAttempt
from dashboard.jobs.placement import place_queued

from .conftest import online

H = 3600.0  # half-life: one hour


@pytest.mark.django_db
def test_the_queue_of_equal_priority_goes_in_fair_share_order(settings, owner, stranger, team_a, team_b):
    settings.FAIRSHARE_HALF_LIFE_S = H
    from django.utils import timezone

    now = timezone.now()
    # Team B used a GPU for the last hour, team A a GPU the hour before: F(A) > F(B).
    for user, team, hours_ago in ((owner, team_a, 2), (stranger, team_b, 1)):
        done = Job.objects.create(owner=user, team=team, name="past", kind="train", argv=["true"], status="succeeded")
        start = now - timedelta(hours=hours_ago)
        JobAttempt.objects.create(job=done, number=1, gpus=[0], started_at=start, ended_at=start + timedelta(hours=1))
    online("pool-box", gpus=1)
    # B's job was submitted first; with one GPU free, fair share gives it to A's.
    b_job = Job.objects.create(
        owner=stranger,
        team=team_b,
        name="b",
        kind="train",
        argv=["true"],
        gpu_memory_gb=30,
        created_at=now - timedelta(minutes=5),
    )
    a_job = Job.objects.create(owner=owner, team=team_a, name="a", kind="train", argv=["true"], gpu_memory_gb=30)
    place_queued()
    assert Job.objects.get(pk=a_job.pk).status == "placed"
    assert Job.objects.get(pk=b_job.pk).status == "queued"
    # A higher priority still goes first, whatever the usage.
    Job.objects.filter(pk=a_job.pk).update(status="queued", machine=None, assigned_gpus=[])
    Job.objects.filter(pk=b_job.pk).update(priority=1)
    place_queued()
    assert Job.objects.get(pk=b_job.pk).status == "placed"
