"""Job submissions that once answered 500 on PostgreSQL (a NUL in any field) or were read wrongly
(``false`` as 0 GiB): each is refused with a 400 that names the field, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from dashboard.jobs.models import Job

TRAIN = {
    "name": "tiny lm",
    "kind": "train",
    "command": ["python", "-m", "hwprobe.workloads", "train", "--seconds", "5"],
    "gpus": 0,
}


def submit(client, body):
    return client.post("/api/v1/jobs", data=json.dumps(body), content_type="application/json")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change, field",
    [
        ({"name": "tiny\x00lm"}, "name"),
        ({"kind": "train\x00"}, "kind"),
        ({"command": ["python", "-m", "hwprobe.workloads\x00"]}, "command[2]"),
        ({"command": "python train.py\x00"}, "command"),
        ({"machine": "gpu-01\x00"}, "machine"),
        ({"workdir": "/srv/\x00"}, "workdir"),
        ({"env": {"HF_HOME": "/data\x00"}}, "env.HF_HOME"),
        ({"env": {"HF\x00HOME": "/data"}}, "env"),
        ({"metrics_url": "http://127.0.0.1:8000/\x00"}, "metrics_url"),
        ({"progress_pattern": "(?P<tokens>\\d+)\x00"}, "progress_pattern"),
        ({"precision": "int4\x00"}, "precision"),
        ({"team": "ml\x00"}, "team"),
        ({"secret_env": ["HF\x00"]}, "secret_env[0]"),
    ],
)
def test_a_nul_character_in_any_job_field_is_refused_naming_it(client, operator, change, field):
    client.force_login(operator)
    r = submit(client, TRAIN | change)
    assert r.status_code == 400, r.content
    error = r.json()["error"]
    assert error.startswith(f"{field}: ") and "NUL" in error, error
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_a_lone_surrogate_is_refused_naming_the_field(client, operator):
    client.force_login(operator)
    body = json.dumps(TRAIN).replace('"tiny lm"', '"tiny \\udc80"')
    r = client.post("/api/v1/jobs", data=body, content_type="application/json")
    assert r.status_code == 400 and r.json()["error"].startswith("name: contains a lone surrogate"), r.content


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change, field",
    [
        ({"gpu_memory_gb": False}, "gpu_memory_gb"),
        ({"gpus": True}, "gpus"),
        ({"gpus": "2"}, "gpus"),
        ({"priority": 1.0}, "priority"),
        ({"preemptible": 1}, "preemptible"),
        ({"max_runtime_s": "60"}, "max_runtime_s"),
    ],
)
def test_numbers_and_booleans_must_be_sent_as_such(client, operator, change, field):
    client.force_login(operator)
    r = submit(client, TRAIN | change)
    assert r.status_code == 400 and r.json()["error"].startswith(f"{field}: "), r.content


@pytest.mark.django_db
def test_an_integer_is_a_valid_number_of_gib_and_precision_takes_its_name(client, operator):
    client.force_login(operator)
    r = submit(client, TRAIN | {"gpu_memory_gb": 4, "precision": "int4"})
    assert r.status_code == 201, r.content
    assert r.json()["gpu_memory_gb"] == 4.0 and r.json()["precision"] == "int4"


@pytest.mark.django_db
@pytest.mark.parametrize("limit", ["0", "-1", "1001", "many"])
def test_the_jobs_list_refuses_a_limit_outside_1_to_1000(client, viewer, limit):
    client.force_login(viewer)
    r = client.get("/api/v1/jobs", {"limit": limit})
    assert r.status_code == 400 and r.json()["error"].startswith("limit: "), r.content


@pytest.mark.django_db
def test_a_job_id_past_the_database_limit_is_not_found(client, viewer):
    client.force_login(viewer)
    for url in ("/api/v1/jobs/99999999999999999999", "/api/v1/jobs/1/log?after=99999999999999999999"):
        assert client.get(url).status_code in (400, 404), url
