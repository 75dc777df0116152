"""Placement on MIG: the compute instances of one GPU instance share its memory, counted once.

The GPU instance with two compute instances is built from the real H100 MIG capture
(hwprobe/tests/test_nvidia_mig.py says how); everything else is the capture as recorded.
"""

from __future__ import annotations

import pytest

from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import Batch
from dashboard.jobs import placement
from dashboard.jobs.models import Job
from hwprobe.collectors.nvidia import NvidiaCollector
from hwprobe.testing import batches, nvml_replay
from hwprobe.tests.conftest import capture_q
from hwprobe.tests.test_nvidia_mig import two_compute_instances

GIB = 2**30
MiB = 2**20


def ingest(machine: Machine, recording: dict) -> None:
    nv = NvidiaCollector(nvml=nvml_replay.from_recording(recording), pid_info=lambda pid: (None, None))
    store_batch(machine, Batch.model_validate(batches.batch(nv, [1])))
    machine.refresh_from_db()


@pytest.mark.django_db
def test_the_memory_of_a_gpu_instance_with_two_compute_instances_is_counted_once(machine):
    ingest(machine, two_compute_instances())
    cap = placement.capacity(machine, [])
    # MIG devices 1 and 2 are compute instances 0 and 1 of GPU instance 2 (40448 MiB, 11125 MiB used),
    # then GPU instances 3, 9 and 10 as captured.
    assert [g.index for g in cap.gpus] == [1, 2, 3, 4, 5]
    assert cap.gpus[0].pool == cap.gpus[1].pool != ""
    free = [40448 - 11091, 20096 - 17, 9984 - 9, 9984 - 9]
    assert cap.free_bytes == sum(free) * MiB


@pytest.mark.django_db
def test_two_jobs_never_share_out_one_gpu_instances_memory_twice(machine, operator):
    ingest(machine, two_compute_instances())
    need = 20.0  # GiB: one fits in GPU instance 2's 28.7 GiB free, two do not
    jobs = [
        Job.objects.create(owner=operator, name=f"j{i}", kind="train", argv=["x"], gpus=1, gpu_memory_gb=need)
        for i in range(2)
    ]
    first = placement.choose_gpus(jobs[0], placement.capacity(machine, []))
    assert first in ([1], [2])
    Job.objects.filter(pk=jobs[0].pk).update(status="placed", machine=machine, assigned_gpus=first)
    jobs[0].refresh_from_db()
    cap = placement.capacity(machine, [jobs[0]])
    assert {g.index: round(g.free_bytes / GIB, 1) for g in cap.gpus}[1] == round((40448 - 11091) / 1024 - need, 1)
    assert placement.choose_gpus(jobs[1], cap) is None


@pytest.mark.django_db
def test_one_job_may_take_both_compute_instances_only_if_the_pool_holds_it_twice(machine, operator):
    ingest(machine, two_compute_instances())
    cap = placement.capacity(machine, [])
    # Three devices with 14 GiB each: GPU instance 3 (19.6 GiB) and both compute instances of
    # GPU instance 2 (28.7 GiB between them); with 15 GiB each the shared pool holds only one.
    fits = Job(owner=operator, name="s", kind="train", gpus=3, gpu_memory_gb=14.0)
    too_big = Job(owner=operator, name="b", kind="train", gpus=3, gpu_memory_gb=15.0)
    assert placement.choose_gpus(fits, cap) == [1, 2, 3]
    assert placement.choose_gpus(too_big, cap) is None


@pytest.mark.django_db
def test_mig_devices_of_separate_gpu_instances_stay_separate_pools(machine):
    ingest(machine, nvml_replay.nvidia_smi_q_to_recording(*capture_q("h100_mig", "load")))
    cap = placement.capacity(machine, [])
    assert len({g.pool_key for g in cap.gpus}) == 4
    assert cap.free_bytes == sum([40448 - 11091, 20096 - 17, 9984 - 9, 9984 - 9]) * MiB
