"""Placement by free GPU memory, priorities, policies, preemption and concurrent schedulers."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from conftest import make_batch
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine, MachineState
from dashboard.fleet.payload import Batch
from dashboard.jobs import placement
from dashboard.jobs.models import Job
from dashboard.jobs.placement import place_queued

# make_batch: each GPU has 85,520,809,984 B total and 40e9 used, so about 42.4 GiB free.


def report(m: Machine, used: float, seq: int = 1, gpus: int = 2) -> None:
    """Telemetry from the machine: every GPU has ``used`` bytes in use."""
    batch = make_batch([seq], gpus=gpus)
    for g in batch["samples"][0]["gpus"]:
        g["mem_used_bytes"] = {"min": used, "mean": used, "max": used}
    store_batch(m, Batch.model_validate(batch))
    m.refresh_from_db()


def online(name: str, gpus: int = 2, used: float = 40e9, policy: str = "shared") -> Machine:
    m = Machine.objects.create(name=name, policy=policy)
    report(m, used, gpus=gpus)
    return m


def job(owner, name="j", gpus=1, mem=30.0, kind="train", priority=0, **kw) -> Job:
    return Job.objects.create(
        owner=owner,
        name=name,
        kind=kind,
        argv=["python", "-m", "hwprobe.workloads", kind],
        gpus=gpus,
        gpu_memory_gb=mem,
        priority=priority,
        **kw,
    )


@pytest.mark.django_db
def test_it_places_a_job_on_the_machine_with_room(operator):
    online("busy", used=80e9)
    roomy = online("roomy", used=10e9)
    j = job(operator, gpus=2, mem=60)
    assert [p.machine for p in place_queued()] == ["roomy"]
    j.refresh_from_db()
    assert j.status == "placed" and j.machine == roomy and j.assigned_gpus == [0, 1] and j.attempt == 1
    assert j.attempts.get().machine == roomy


@pytest.mark.django_db
def test_a_job_that_fits_nowhere_waits_and_says_why(operator):
    online("gpu-01", used=60e9)
    j = job(operator, gpus=2, mem=40)
    assert place_queued() == []
    j.refresh_from_db()
    assert j.status == "queued"
    assert j.status_message == "needs 2 GPUs × 40 GiB; the largest free is 1 × 24 GiB on gpu-01"


@pytest.mark.django_db
def test_a_job_that_names_no_memory_says_so_without_a_zero(operator):
    online("gpu-01", gpus=2)
    j = job(operator, gpus=3, mem=0)
    assert place_queued() == []
    j.refresh_from_db()
    assert j.status_message == "needs 3 GPUs; at most 2 GPU(s) free, on gpu-01"


@pytest.mark.django_db
def test_placed_jobs_reserve_memory_until_telemetry_shows_them(operator):
    online("gpu-01", gpus=1)
    first, second = job(operator, name="a", mem=30), job(operator, name="b", mem=30)
    place_queued()
    first.refresh_from_db(), second.refresh_from_db()
    assert first.status == "placed" and second.status == "queued"
    assert "largest free is 1 × 12 GiB" in second.status_message


@pytest.mark.django_db
def test_higher_priority_goes_first_then_first_come(operator):
    online("gpu-01", gpus=1)
    low = job(operator, name="low", mem=30)
    high = job(operator, name="high", mem=30, priority=5)
    place_queued()
    assert Job.objects.get(pk=high.pk).status == "placed"
    assert Job.objects.get(pk=low.pk).status == "queued"


@pytest.mark.django_db
def test_offline_machines_and_targets_are_respected(operator):
    m = online("gpu-01")
    other = online("gpu-02")
    MachineState.objects.update_or_create(machine_id=m.pk, defaults={"last_seen_at": m.last_seen_at.replace(year=2020)})
    j = job(operator, target=Machine.objects.get(pk=m.pk))
    place_queued()
    j.refresh_from_db()
    assert j.status == "queued" and "gpu-01 is offline" in j.status_message
    k = job(operator, target=other)
    place_queued()
    assert Job.objects.get(pk=k.pk).machine == other


@pytest.mark.django_db
def test_a_dedicated_machine_does_not_mix_training_and_serving(operator):
    online("gpu-01", gpus=2, used=0, policy="dedicated")
    job(operator, name="train", kind="train", mem=10)
    serve = job(operator, name="serve", kind="serve", mem=10)
    place_queued()
    serve.refresh_from_db()
    assert serve.status == "queued" and "dedicated" in serve.status_message


@pytest.mark.django_db
def test_serving_preempts_lower_priority_preemptible_training(operator):
    m = online("gpu-01", gpus=1, used=0)
    train = job(operator, name="train", kind="train", mem=60, preemptible=True)
    place_queued()
    Job.objects.filter(pk=train.pk).update(status="running")
    report(m, used=65e9, seq=2, gpus=1)  # the training job now holds its memory
    serve = job(operator, name="serve", kind="serve", mem=60, priority=10)
    place_queued()
    train.refresh_from_db(), serve.refresh_from_db()
    assert train.preempt_requested and serve.status == "queued"
    assert f"preempting training job(s) #{train.pk}" in serve.status_message


@pytest.mark.django_db
def test_a_cpu_only_job_needs_no_gpu(operator):
    online("cpu-01", gpus=0)
    j = job(operator, gpus=0, mem=0)
    place_queued()
    j.refresh_from_db()
    assert j.status == "placed" and j.assigned_gpus == []


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_at_once_never_hand_out_the_same_memory(operator, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite serialises writers by itself")
    real_capacity = placement.capacity

    def slow_capacity(*args):
        time.sleep(0.3)  # widen the window in which unlocked schedulers would race
        return real_capacity(*args)

    monkeypatch.setattr(placement, "capacity", slow_capacity)
    online("gpu-01", gpus=2)  # room for exactly two 30 GiB jobs
    for i in range(10):
        job(operator, name=f"j{i}", mem=30)
    barrier = threading.Barrier(4)
    results: list[int] = []
    errors: list[Exception] = []

    def scheduler():
        barrier.wait()
        try:
            results.append(len(place_queued()))
        except Exception as exc:  # collected: the assertion below reports it
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=scheduler) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    placed = Job.objects.filter(status="placed")
    assert errors == [] and sum(results) == 2 and placed.count() == 2
    assert sorted(g for j in placed for g in j.assigned_gpus) == [0, 1]
