"""Train in the gaps: with the backfill policy on, preemptible training fills the GPUs a serving
machine leaves free, and serving takes them back."""

from __future__ import annotations

import pytest

from dashboard.jobs import service
from dashboard.jobs.models import Job
from dashboard.jobs.placement import place_queued

from .test_placement import job, online, report

pytestmark = pytest.mark.django_db


def serving_machine(operator, name: str = "serve-01") -> tuple:
    """A machine dedicated to serving, one of its two GPUs busy with a running serving job."""
    m = online(name, gpus=2, used=0, policy="dedicated")
    serve = job(operator, name="serve", kind="serve", gpus=1, mem=30)
    place_queued()
    Job.objects.filter(pk=serve.pk).update(status="running")
    return m, Job.objects.get(pk=serve.pk)


def turn(enabled: bool) -> None:
    service.set_backfill(enabled, None)


def test_with_the_policy_off_training_keeps_off_a_machine_dedicated_to_serving(operator):
    serving_machine(operator)
    train = job(operator, name="train", kind="train", mem=30, preemptible=True)
    assert place_queued() == []
    train.refresh_from_db()
    assert train.status == "queued" and "dedicated to the other kind" in train.status_message


def test_with_the_policy_on_preemptible_training_takes_the_free_gpu_as_backfill(operator):
    m, serve = serving_machine(operator)
    turn(True)
    steady = job(operator, name="steady", kind="train", mem=30)  # not preemptible: never backfill
    train = job(operator, name="train", kind="train", mem=30, preemptible=True)
    assert [p.machine for p in place_queued()] == ["serve-01"]
    train.refresh_from_db(), steady.refresh_from_db()
    assert train.status == "placed" and train.backfill and train.assigned_gpus == [1]
    assert train.machine == m and "as backfill" in train.status_message
    assert steady.status == "queued"


def test_serving_takes_its_gpus_back_from_backfill_whatever_the_priorities(operator):
    m, _ = serving_machine(operator)
    turn(True)
    train = job(operator, name="train", kind="train", mem=30, preemptible=True, priority=50)
    place_queued()
    Job.objects.filter(pk=train.pk).update(status="running")
    report(m, used=35e9, seq=2)  # both GPUs now hold their jobs' memory
    second = job(operator, name="serve-2", kind="serve", gpus=1, mem=30)  # priority 0 < 50
    place_queued()
    train.refresh_from_db(), second.refresh_from_db()
    assert train.preempt_requested and second.status == "queued"
    assert f"preempting training job(s) #{train.pk}" in second.status_message


def test_turning_the_policy_off_preempts_running_backfill_and_places_no_more(operator):
    serving_machine(operator)
    turn(True)
    train = job(operator, name="train", kind="train", mem=30, preemptible=True)
    place_queued()
    Job.objects.filter(pk=train.pk).update(status="running")
    turn(False)
    later = job(operator, name="later", kind="train", mem=10, preemptible=True)
    place_queued()
    train.refresh_from_db(), later.refresh_from_db()
    assert train.preempt_requested  # requeued by its worker: backfill is preemptible
    assert later.status == "queued"


def test_an_idle_dedicated_machine_takes_training_the_ordinary_way(operator):
    turn(True)
    online("idle-01", gpus=1, used=0, policy="dedicated")
    train = job(operator, name="train", kind="train", mem=30, preemptible=True)
    place_queued()
    train.refresh_from_db()
    assert train.status == "placed" and not train.backfill
