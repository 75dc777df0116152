"""A running job's own GPU memory, traced through its process group."""

from __future__ import annotations

import pytest

from conftest import make_batch
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.payload import Batch
from dashboard.jobs import queries
from dashboard.jobs.models import Job


@pytest.mark.django_db
def test_the_job_page_shows_the_gpu_processes_of_the_jobs_process_group(client, machine, operator):
    batch = make_batch([1], gpus=2)
    batch["samples"][0]["gpus"][0]["processes"] = [
        {"pid": 101, "name": "python3", "user": "olga", "pgid": 100, "mem_used_bytes": 30 * 2**30},
        {"pid": 555, "name": "ollama", "user": "root", "pgid": 555, "mem_used_bytes": 8 * 2**30},
    ]
    batch["samples"][0]["gpus"][1]["processes"] = [
        {"pid": 102, "name": "python3", "user": "olga", "pgid": 100, "mem_used_bytes": 10 * 2**30},
    ]
    store_batch(machine, Batch.model_validate(batch))
    job = Job.objects.create(
        owner=operator,
        name="ddp",
        kind="train",
        argv=["x"],
        gpus=2,
        machine=machine,
        assigned_gpus=[0, 1],
        status="running",
        attempt=1,
        pgid=100,
    )
    job = Job.objects.select_related("machine").get(pk=job.pk)  # with the machine's latest sample
    found = queries.job_gpu_processes(job)
    assert [(p["gpu"], p["pid"]) for p in found["processes"]] == [(0, 101), (1, 102)]
    assert found["mem_used_bytes"] == 40 * 2**30
    client.force_login(operator)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "GPU processes of this job" in page and "40.0 GiB" in page and "ollama" not in page
    Job.objects.filter(pk=job.pk).update(status="succeeded")
    job.refresh_from_db()
    assert queries.job_gpu_processes(job) is None
