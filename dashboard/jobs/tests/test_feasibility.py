"""Jobs that no machine could ever take are refused when submitted, with the reason."""

from __future__ import annotations

import pytest
from celery import current_app

from conftest import make_batch
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import Batch
from dashboard.jobs import feasibility
from dashboard.jobs.models import Job

TRAIN = "python -m hwprobe.workloads train --seconds 60"


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    monkeypatch.setattr(current_app, "send_task", lambda name, **options: None)


def reporting(name: str, gpus: int) -> Machine:
    machine = Machine.objects.create(name=name)
    store_batch(machine, Batch.model_validate(make_batch([1], gpus=gpus)))  # H100s, 40 GB used each
    machine.refresh_from_db()
    return machine


def submit(client, **fields):
    body = {"name": "t", "kind": "train", "command": TRAIN.split()} | fields
    return client.post("/api/v1/jobs", body, content_type="application/json")


def test_a_job_for_a_named_machine_without_gpus_is_refused_with_the_machines_name(db, client, operator):
    reporting("cpu-01", gpus=0)
    client.force_login(operator)
    r = submit(client, machine="cpu-01", gpus=1, gpu_memory_gb=4)
    assert r.status_code == 400
    assert r.json() == {"error": "gpus: cpu-01 has no GPUs: ask for 0 GPUs, or choose another machine"}
    assert submit(client, machine="cpu-01", gpus=0).status_code == 201


def test_more_gpus_or_memory_than_any_machine_has_is_refused_naming_the_largest(db, client, operator):
    reporting("gpu-01", gpus=2)
    reporting("cpu-01", gpus=0)
    client.force_login(operator)
    r = submit(client, gpus=64, gpu_memory_gb=80)
    assert r.json() == {
        "error": "gpus: no machine in the fleet has 64 GPUs × 80 GiB; the largest is gpu-01 with 2 GPUs of 79.6 GiB"
    }
    r = submit(client, machine="gpu-01", gpus=1, gpu_memory_gb=120)
    assert r.json() == {"error": "gpu_memory_gb: gpu-01 has 2 GPUs of 79.6 GiB; the job asks for 1 GPU × 120 GiB"}
    assert submit(client, machine="nope").json() == {"error": "machine: no machine named 'nope'"}
    assert not Job.objects.exists()
    # A job that fits the fleet, even if all of it is busy now, waits instead.
    assert submit(client, gpus=2, gpu_memory_gb=79).status_code == 201


def test_a_machine_whose_inventory_has_not_arrived_refuses_nothing(db, operator):
    reporting("cpu-01", gpus=0)
    Machine.objects.create(name="new-box")  # enrolled, agent not started: it may have any GPUs
    assert feasibility.refusal(8, 80) is None
    assert feasibility.refusal(8, 80, "new-box") is None
    assert feasibility.refusal(1, 0, "cpu-01") == (
        "gpus",
        "cpu-01 has no GPUs: ask for 0 GPUs, or choose another machine",
    )


def test_the_placement_check_names_the_machines_with_room_now(db, client, viewer):
    reporting("gpu-01", gpus=2)  # about 42 GiB free on each GPU
    reporting("cpu-01", gpus=0)
    client.force_login(viewer)
    check = lambda **q: client.get("/api/v1/jobs/placement", q).json()  # noqa: E731
    assert check(gpus=0) == {"refusal": None, "ready": ["cpu-01", "gpu-01"]}
    assert check(gpus=2, gpu_memory_gb=40) == {"refusal": None, "ready": ["gpu-01"]}
    assert check(gpus=2, gpu_memory_gb=60) == {"refusal": None, "ready": []}
    assert check(gpus=1, machine="cpu-01")["refusal"]["field"] == "gpus"


def test_the_templates_ask_for_no_gpu_where_the_fleet_has_none(db, client, operator):
    reporting("cpu-01", gpus=0)
    client.force_login(operator)
    page = client.get("/jobs/new/?template=train")
    form = page.context["form"]
    assert (form["gpus"].value(), form["gpu_memory_gb"].value()) == (0, 0)
    assert 'data-gpus="0"' in page.content.decode()
    assert "Could start now on: cpu-01" in page.content.decode()
    reporting("gpu-01", gpus=2)
    form = client.get("/jobs/new/?template=train").context["form"]
    assert (form["gpus"].value(), form["gpu_memory_gb"].value()) == (1, 4)
    form = client.get("/jobs/new/?template=train&machine=cpu-01").context["form"]
    assert (form["gpus"].value(), form["machine"].value()) == (0, "cpu-01")


def test_the_form_refuses_a_job_no_machine_could_take_next_to_the_gpus_field(db, client, operator):
    reporting("cpu-01", gpus=0)
    client.force_login(operator)
    body = {
        "name": "t",
        "kind": "train",
        "command": TRAIN,
        "gpus": "1",
        "gpu_memory_gb": "4",
        "machine": "cpu-01",
        "priority": "0",
    }
    r = client.post("/jobs/new/", body)
    assert r.context["form"].errors.get_json_data() == {
        "gpus": [{"message": "cpu-01 has no GPUs: ask for 0 GPUs, or choose another machine", "code": ""}]
    }
