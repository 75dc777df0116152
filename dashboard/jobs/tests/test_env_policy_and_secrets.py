"""A job's environment: variables a host refuses are refused at submission, and secret values are
seen only by the job's owner and admins (API, pages, log, audit)."""

from __future__ import annotations

import json
import logging

import pytest
from django.utils import timezone

from conftest import make_batch
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import Batch
from dashboard.jobs import masking, service
from dashboard.jobs.models import AuditEvent, Job, JobLog
from hwprobe.policy import Policy

TRAIN = {
    "name": "tiny lm",
    "kind": "train",
    "command": ["python", "-m", "hwprobe.workloads", "train", "--seconds", "5"],
    "gpus": 0,
}
SECRET = "hf_abcdefghijklmnop"


def submit(client, **fields):
    return client.post("/api/v1/jobs", data=json.dumps(TRAIN | fields), content_type="application/json")


@pytest.fixture
def reported(machine) -> Machine:
    """gpu-01 online, its worker having reported the host's default policy."""
    store_batch(machine, Batch.model_validate(make_batch([1])))
    Machine.objects.filter(pk=machine.pk).update(worker_policy=Policy().summary(), worker_seen_at=timezone.now())
    machine.refresh_from_db()
    return machine


@pytest.mark.django_db
def test_ld_preload_is_refused_at_submission_from_the_policy_the_host_reported(client, operator, reported):
    client.force_login(operator)
    r = submit(client, machine="gpu-01", env={"LD_PRELOAD": "/tmp/evil.so"})
    assert r.status_code == 400, r.content
    assert r.json()["error"].startswith("env: LD_PRELOAD is not allowed on gpu-01"), r.json()
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_a_host_whose_deny_list_allows_a_variable_gets_the_job(client, operator, reported):
    Machine.objects.filter(pk=reported.pk).update(worker_policy={**Policy().summary(), "deny_env": ["PYTHONPATH"]})
    client.force_login(operator)
    assert submit(client, machine="gpu-01", env={"LD_LIBRARY_PATH": "/opt/cuda/lib"}).status_code == 201
    assert submit(client, machine="gpu-01", env={"PYTHONPATH": "/x"}).status_code == 400


@pytest.mark.django_db
def test_automatic_placement_refuses_a_variable_every_host_refuses(client, operator, reported):
    client.force_login(operator)
    r = submit(client, env={"PYTHONPATH": "/srv/evil"})
    assert r.status_code == 400 and r.json()["error"].startswith("env: PYTHONPATH"), r.content
    assert submit(client, env={"HF_HOME": "/data/hf"}).status_code == 201


@pytest.mark.django_db
def test_a_machine_whose_worker_never_reported_gets_the_hosts_default_deny_list(client, operator, machine):
    client.force_login(operator)
    r = submit(client, machine="gpu-01", env={"BASH_ENV": "/tmp/x"})
    assert r.status_code == 400 and "BASH_ENV" in r.json()["error"], r.content


@pytest.mark.django_db
def test_the_submit_form_names_the_refused_variable_under_the_environment(client, operator, reported):
    client.force_login(operator)
    page = client.post(
        "/jobs/new/",
        {
            "name": "train-demo",
            "kind": "train",
            "command": "python -m hwprobe.workloads train --seconds 60",
            "gpus": "0",
            "gpu_memory_gb": "0",
            "machine": "gpu-01",
            "priority": "0",
            "env": "LD_PRELOAD=/tmp/evil.so",
        },
    )
    assert page.status_code == 200 and Job.objects.count() == 0
    field = page.content.decode().split('id="field-env"')[1].split('class="field')[0]
    assert "LD_PRELOAD is not allowed on gpu-01" in field


def test_names_that_look_secret_are_secret_in_any_case():
    for name in ("HF_TOKEN", "hf_token", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "API_KEY", "wandb_api_key"):
        assert masking.is_secret(name), name
    for name in ("HF_HOME", "CUDA_VISIBLE_DEVICES", "BATCH_SIZE"):
        assert not masking.is_secret(name), name
    assert masking.is_secret("WANDB_ENTITY", marked=["WANDB_ENTITY"])


@pytest.fixture
def secret_job(client, operator) -> dict:
    client.force_login(operator)
    r = submit(
        client, env={"HF_TOKEN": SECRET, "WANDB_ENTITY": "acme-lab", "HF_HOME": "/data/hf"}, secret_env=["WANDB_ENTITY"]
    )
    assert r.status_code == 201, r.content
    client.logout()
    return r.json()


@pytest.mark.django_db
def test_the_owner_reads_secret_values_and_a_viewer_reads_masks(client, operator, viewer, secret_job):
    client.force_login(operator)
    own = client.get(f"/api/v1/jobs/{secret_job['id']}").json()
    assert own["env"] == {"HF_TOKEN": SECRET, "WANDB_ENTITY": "acme-lab", "HF_HOME": "/data/hf"}
    assert own["secret_env"] == ["WANDB_ENTITY"]
    client.force_login(viewer)
    for body in (client.get(f"/api/v1/jobs/{secret_job['id']}").json(), client.get("/api/v1/jobs").json()["jobs"][0]):
        assert body["env"] == {"HF_TOKEN": masking.MASK, "WANDB_ENTITY": masking.MASK, "HF_HOME": "/data/hf"}
    page = client.get(f"/jobs/{secret_job['id']}/").content.decode()
    assert SECRET not in page and "acme-lab" not in page and "HF_TOKEN=" + masking.MASK in page
    assert "HF_HOME=/data/hf" in page


@pytest.mark.django_db
def test_an_admin_reads_secret_values(client, admin_user, secret_job):
    client.force_login(admin_user)
    assert client.get(f"/api/v1/jobs/{secret_job['id']}").json()["env"]["HF_TOKEN"] == SECRET
    assert SECRET in client.get(f"/jobs/{secret_job['id']}/").content.decode()


@pytest.mark.django_db
def test_a_secret_the_job_prints_is_masked_in_its_log_for_viewers(client, operator, viewer, secret_job):
    job = Job.objects.get(pk=secret_job["id"])
    JobLog.objects.create(
        job=job, attempt=1, seq=0, stream="stdout", text=f"token={SECRET} entity=acme-lab\n", ts=timezone.now()
    )
    client.force_login(viewer)
    text = client.get(f"/api/v1/jobs/{job.pk}/log").json()["chunks"][0]["text"]
    assert text == f"token={masking.MASK} entity={masking.MASK}\n"
    client.force_login(operator)
    assert SECRET in client.get(f"/api/v1/jobs/{job.pk}/log").json()["chunks"][0]["text"]


@pytest.mark.django_db
def test_the_audit_log_and_the_server_log_never_hold_a_secret(client, operator, caplog):
    client.force_login(operator)
    with caplog.at_level(logging.DEBUG):
        r = submit(client, env={"HF_TOKEN": SECRET, "HF_HOME": "/data/hf"})
    assert r.status_code == 201
    detail = AuditEvent.objects.get(action="job.submit").detail
    assert detail["env"] == {"HF_TOKEN": masking.MASK, "HF_HOME": "/data/hf"}
    assert SECRET not in caplog.text
    assert Job.objects.get().env["HF_TOKEN"] == SECRET  # the host still gets the real value
    assert service.spec(Job.objects.get())["env"]["HF_TOKEN"] == SECRET


@pytest.mark.django_db
def test_secret_env_must_name_variables_of_the_environment(client, operator):
    client.force_login(operator)
    r = submit(client, env={"HF_HOME": "/data/hf"}, secret_env=["HF_TOKN"])
    assert r.status_code == 400 and r.json()["error"].startswith("secret_env: HF_TOKN"), r.content
