"""The jobs API: who may submit and cancel, validation, and the worker's claim/heartbeat/log/finish."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from dashboard.fleet.models import Machine
from dashboard.jobs import service
from dashboard.jobs.models import AuditEvent, Job, JobLog
from dashboard.jobs.placement import place_queued
from dashboard.jobs.tests.test_placement import online

TRAIN = {
    "name": "tiny lm",
    "kind": "train",
    "command": ["python", "-m", "hwprobe.workloads", "train", "--seconds", "5"],
    "gpus": 0,
}


def post(client, url, body=None, token=None):
    extra = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return client.post(url, data=json.dumps(body or {}), content_type="application/json", **extra)


@pytest.mark.django_db
def test_an_operator_submits_and_the_submission_is_audited(client, operator):
    client.force_login(operator)
    r = post(client, "/api/v1/jobs", TRAIN)
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["status"] == "queued" and body["owner"] == "olga" and body["command"] == TRAIN["command"]
    event = AuditEvent.objects.get()
    assert event.action == "job.submit" and event.actor == operator and event.job_id == body["id"]


@pytest.mark.django_db
def test_a_viewer_can_read_but_not_submit(client, viewer, operator):
    job = service.submit(operator, {"name": "x", "kind": "train", "argv": ["true"], "gpus": 0})
    client.force_login(viewer)
    r = post(client, "/api/v1/jobs", TRAIN)
    assert r.status_code == 403 and "operators" in r.json()["error"]
    assert client.get(f"/api/v1/jobs/{job.pk}").json()["status"] == "queued"
    assert post(client, f"/api/v1/jobs/{job.pk}/cancel").status_code == 403


@pytest.mark.django_db
def test_anonymous_users_and_agent_tokens_cannot_submit(client, agent_token):
    assert post(client, "/api/v1/jobs", TRAIN).status_code == 401
    assert post(client, "/api/v1/jobs", TRAIN, token=agent_token).status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change, field",
    [
        ({"kind": "mine"}, "kind"),
        ({"gpus": -1}, "gpus"),
        ({"gpu_memory_gb": -5}, "gpu_memory_gb"),
        ({"command": []}, "command"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"machine": "nowhere"}, "machine"),
        ({"surprise": 1}, "surprise"),
        ({"kind": "serve", "preemptible": True}, "preemptible"),
        ({"model_params_b": 0}, "model_params_b"),
        ({"model_params_b": -7}, "model_params_b"),
        ({"model_params_b": 10_001}, "model_params_b"),
        ({"model_params_b": "seven"}, "model_params_b"),
        ({"precision": "fp64"}, "precision"),
        ({"precision": "INT4"}, "precision"),
        ({"context_tokens": 0}, "context_tokens"),
        ({"context_tokens": 8192.5}, "context_tokens"),
    ],
)
def test_bad_submissions_name_the_field(client, operator, change, field):
    client.force_login(operator)
    r = post(client, "/api/v1/jobs", {**TRAIN, **change})
    assert r.status_code == 400, r.content
    assert r.json()["error"].startswith(field), r.json()
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_the_model_fields_are_stored_and_read_back(client, operator):
    client.force_login(operator)
    r = post(client, "/api/v1/jobs", {**TRAIN, "model_params_b": 8.03, "precision": "bf16", "context_tokens": 8192})
    assert r.status_code == 201, r.content
    job = Job.objects.get()
    assert (job.model_params_b, job.precision, job.context_tokens) == (8.03, "bf16", 8192)
    body = client.get(f"/api/v1/jobs/{job.pk}").json()
    assert (body["model_params_b"], body["precision"], body["context_tokens"]) == (8.03, "bf16", 8192)


@pytest.mark.django_db
def test_the_model_fields_are_optional_and_read_back_as_null(client, operator):
    client.force_login(operator)
    r = post(client, "/api/v1/jobs", {**TRAIN, "precision": None})
    assert r.status_code == 201, r.content
    job = Job.objects.get()
    assert (job.model_params_b, job.precision, job.context_tokens) == (None, "", None)
    body = client.get(f"/api/v1/jobs/{job.pk}").json()
    assert (body["model_params_b"], body["precision"], body["context_tokens"]) == (None, None, None)


@pytest.mark.django_db
def test_the_database_refuses_a_model_size_out_of_range(operator):
    from django.db import IntegrityError, transaction

    for bad in (0, -1, 10_001):
        with pytest.raises(IntegrityError), transaction.atomic():
            Job.objects.create(owner=operator, name="x", kind="train", argv=["true"], model_params_b=bad)


@pytest.mark.django_db
def test_operators_cancel_their_own_jobs_and_admins_any(client, operator, admin_user, django_user_model):
    from django.contrib.auth.models import Group

    other = django_user_model.objects.create_user("otto", password="x")
    other.groups.add(Group.objects.get(name="operator"))
    mine = service.submit(operator, {"name": "a", "kind": "train", "argv": ["true"], "gpus": 0})
    theirs = service.submit(other, {"name": "b", "kind": "train", "argv": ["true"], "gpus": 0})
    client.force_login(operator)
    assert post(client, f"/api/v1/jobs/{theirs.pk}/cancel").status_code == 403
    r = post(client, f"/api/v1/jobs/{mine.pk}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    client.force_login(admin_user)
    assert post(client, f"/api/v1/jobs/{theirs.pk}/cancel").json()["status"] == "cancelled"
    assert list(AuditEvent.objects.filter(action="job.cancel").values_list("actor__username", flat=True)) == [
        "admin",
        "olga",
    ]


@pytest.mark.django_db
def test_the_jobs_list_filters(client, operator, viewer):
    service.submit(operator, {"name": "a", "kind": "train", "argv": ["true"], "gpus": 0})
    service.submit(operator, {"name": "b", "kind": "serve", "argv": ["true"], "gpus": 0})
    client.force_login(viewer)
    assert [j["name"] for j in client.get("/api/v1/jobs", {"kind": "serve"}).json()["jobs"]] == ["b"]
    assert len(client.get("/api/v1/jobs", {"owner": "olga", "status": "queued"}).json()["jobs"]) == 2


@pytest.fixture
def placed(operator):
    m = online("gpu-01", gpus=0)
    job = service.submit(
        operator, {"name": "a", "kind": "train", "argv": ["python", "-m", "hwprobe.workloads", "train"], "gpus": 0}
    )
    place_queued()
    job.refresh_from_db()
    return m, job, m.issue_token()


@pytest.mark.django_db
def test_a_worker_claims_once_streams_its_log_and_finishes(client, placed):
    m, job, token = placed
    base = f"/api/v1/agent/jobs/{job.pk}"
    assert post(client, f"{base}/claim", {"attempt": 1}, token).status_code == 200
    again = post(client, f"{base}/claim", {"attempt": 1}, token)
    assert again.status_code == 409, "a redelivered message must not start the job twice"
    hb = post(client, f"{base}/heartbeat", {"attempt": 1, "pid": 10, "pgid": 10}, token)
    assert hb.json() == {"cancel": False, "preempt": False}
    chunk = {"seq": 0, "stream": "stdout", "text": "step 1\n", "ts": time.time()}
    assert post(client, f"{base}/log", {"attempt": 1, "chunks": [chunk]}, token).json() == {"stored": 1}
    assert post(client, f"{base}/log", {"attempt": 1, "chunks": [chunk]}, token).json() == {"stored": 0}
    assert (
        post(client, f"{base}/finish", {"attempt": 1, "outcome": "succeeded", "exit_code": 0}, token).status_code == 200
    )
    job.refresh_from_db()
    assert job.status == "succeeded" and job.exit_code == 0 and JobLog.objects.get().text == "step 1\n"
    assert job.attempts.get().outcome == "succeeded"


@pytest.mark.django_db
def test_another_machine_cannot_touch_the_job(client, placed):
    _, job, _ = placed
    stranger = Machine.objects.create(name="gpu-99").issue_token()
    assert post(client, f"/api/v1/agent/jobs/{job.pk}/claim", {"attempt": 1}, stranger).status_code == 404


@pytest.mark.django_db
def test_cancel_reaches_the_worker_through_its_heartbeat(client, placed, operator):
    m, job, token = placed
    service.claim(m, job.pk, 1)
    service.cancel(operator, job)
    hb = post(client, f"/api/v1/agent/jobs/{job.pk}/heartbeat", {"attempt": 1}, token)
    assert hb.json()["cancel"] is True


@pytest.mark.django_db
def test_a_job_whose_worker_went_silent_is_lost_and_frees_its_gpus(placed, settings):
    m, job, _ = placed
    service.claim(m, job.pk, 1)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=settings.JOB_LOST_AFTER_S + 1))
    assert service.mark_lost() == [job.pk]
    job.refresh_from_db()
    assert job.status == "lost" and "no heartbeat" in job.status_message
    assert job.attempts.get().outcome == "lost"


@pytest.mark.django_db
def test_a_preempted_job_returns_to_the_queue_for_a_new_attempt(placed):
    m, job, _ = placed
    service.claim(m, job.pk, 1)
    service.finish(m, job.pk, 1, "preempted", None, "SIGTERM for a serving job")
    job.refresh_from_db()
    assert job.status == "queued" and job.machine is None
    place_queued()
    job.refresh_from_db()
    assert job.status == "placed" and job.attempt == 2
    assert [a.outcome for a in job.attempts.all()] == ["preempted", ""]


@pytest.mark.django_db
def test_a_jobs_log_is_bounded_and_says_so(client, placed, settings):
    m, job, token = placed
    settings.JOB_LOG_MAX_BYTES = 100
    service.claim(m, job.pk, 1)
    chunks = [{"seq": i, "stream": "stdout", "text": "x" * 40, "ts": time.time()} for i in range(5)]
    r = post(client, f"/api/v1/agent/jobs/{job.pk}/log", {"attempt": 1, "chunks": chunks}, token)
    assert r.json() == {"stored": 3}  # 40 + 40, then the note instead of the third chunk
    texts = list(JobLog.objects.order_by("seq").values_list("text", flat=True))
    assert texts[:2] == ["x" * 40] * 2 and "JOB_LOG_MAX_BYTES" in texts[2]
    more = [{"seq": 9, "stream": "stdout", "text": "y", "ts": time.time()}]
    assert post(client, f"/api/v1/agent/jobs/{job.pk}/log", {"attempt": 1, "chunks": more}, token).json() == {
        "stored": 0
    }
    bad = [{"seq": 10, "stream": "stdout", "text": "y", "ts": 1e20}]
    assert post(client, f"/api/v1/agent/jobs/{job.pk}/log", {"attempt": 1, "chunks": bad}, token).status_code == 400


# ---- the worker's policy report ---------------------------------------------------------------

REPORT = {
    "builtin_workloads": True,
    "allow_shell": False,
    "run_as": "mluser",
    "templates": [
        {"name": "llama-finetune", "argv": ["python3", "train.py", "*"], "workdir": "/srv/llama*"},
        {"name": "vllm", "argv": ["vllm", "serve", "**"], "workdir": None},
    ],
}


@pytest.mark.django_db
def test_a_worker_reports_its_policy_and_the_machine_keeps_the_latest(client, machine, agent_token):
    r = post(client, "/api/v1/agent/policy", REPORT, agent_token)
    assert r.status_code == 200, r.content
    assert r.json() == {"ok": True, "templates": 2}
    machine.refresh_from_db()
    assert machine.worker_policy == REPORT and machine.worker_seen_at is not None
    first_seen = machine.worker_seen_at
    post(client, "/api/v1/agent/policy", {**REPORT, "allow_shell": True, "templates": []}, agent_token)
    machine.refresh_from_db()
    assert machine.worker_policy["allow_shell"] is True and machine.worker_policy["templates"] == []
    assert machine.worker_seen_at >= first_seen


@pytest.mark.django_db
def test_only_an_agent_token_may_report_a_policy(client, machine, operator):
    assert post(client, "/api/v1/agent/policy", REPORT).status_code == 401
    assert post(client, "/api/v1/agent/policy", REPORT, token="hwa_nope_nope").status_code == 401
    client.force_login(operator)
    assert post(client, "/api/v1/agent/policy", REPORT).status_code == 401
    machine.refresh_from_db()
    assert machine.worker_policy is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change, error",
    [
        ({"allow_shell": "maybe"}, "allow_shell"),
        ({"templates": [{"name": "x", "argv": []}]}, "templates.0.argv"),
        ({"templates": [{"name": "", "argv": ["a"]}]}, "templates.0.name"),
        ({"templates": [{"name": "x", "argv": ["**", "a"]}]}, 'templates.0: argv: "**" may only be the last'),
        ({"templates": [{"name": "x", "argv": ["a", "**", "b"]}]}, "templates.0: argv"),
        ({"templates": [{"name": "x", "argv": ["a" * 5000]}]}, "templates.0.argv.0"),
        ({"templates": [{"name": "x", "argv": ["a"]}] * 201}, "templates"),
        ({"run_as": "u" * 65}, "run_as"),
    ],
)
def test_a_bad_policy_report_is_refused_with_the_field_named(client, machine, agent_token, change, error):
    r = post(client, "/api/v1/agent/policy", {**REPORT, **change}, agent_token)
    assert r.status_code == 400, r.content
    assert r.json()["error"].startswith(error), r.json()
    machine.refresh_from_db()
    assert machine.worker_policy is None


@pytest.mark.django_db
def test_the_api_refuses_what_the_target_machines_worker_reported_it_refuses(client, operator):
    m = Machine.objects.create(
        name="gpu-07",
        worker_policy={
            "builtin_workloads": False,
            "allow_shell": False,
            "run_as": None,
            "templates": [{"name": "train", "argv": ["python3", "train.py", "*"], "workdir": None}],
        },
    )
    client.force_login(operator)
    r = post(client, "/api/v1/jobs", {**TRAIN, "machine": m.name, "command": ["rm", "-rf", "/"]})
    assert r.status_code == 400 and r.json()["error"].startswith("command: gpu-07's worker allows only")
    ok = post(client, "/api/v1/jobs", {**TRAIN, "machine": m.name, "command": ["python3", "train.py", "--fast"]})
    assert ok.status_code == 201
