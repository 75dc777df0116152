"""The jobs API: who may submit and cancel, validation, and the worker's claim/heartbeat/log/finish."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from dashboard.fleet.models import Machine, MachineState
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


def submit_with_key(client, body, key):
    return client.post("/api/v1/jobs", data=json.dumps(body), content_type="application/json", HTTP_IDEMPOTENCY_KEY=key)


@pytest.mark.django_db
def test_a_retry_with_the_same_idempotency_key_returns_the_same_job_and_creates_none(client, operator):
    client.force_login(operator)
    first = submit_with_key(client, TRAIN, "3f0c9a7e-retry-1")
    assert first.status_code == 201, first.content
    again = submit_with_key(client, TRAIN, "3f0c9a7e-retry-1")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert Job.objects.count() == 1 and AuditEvent.objects.filter(action="job.submit").count() == 1
    other = submit_with_key(client, {**TRAIN, "name": "another"}, "3f0c9a7e-retry-1")
    assert other.status_code == 409
    assert other.json()["error"].startswith("Idempotency-Key: already used for a different request")
    assert submit_with_key(client, TRAIN, "3f0c9a7e-retry-2").status_code == 201, "a new key is a new job"
    assert Job.objects.count() == 2


@pytest.mark.django_db
def test_idempotency_keys_belong_to_their_user_and_must_be_visible_ascii(client, operator, admin_user):
    client.force_login(operator)
    assert submit_with_key(client, TRAIN, "k-1").status_code == 201
    client.force_login(admin_user)
    assert submit_with_key(client, TRAIN, "k-1").status_code == 201, "the same key of another user is theirs"
    for bad in ("", "x" * 256, "with space"):
        r = submit_with_key(client, TRAIN, bad)
        assert r.status_code == 400 and r.json()["error"].startswith("Idempotency-Key:"), bad
    assert Job.objects.count() == 2


@pytest.mark.django_db
def test_old_idempotency_keys_are_forgotten(client, operator, settings):
    client.force_login(operator)
    submit_with_key(client, TRAIN, "k-old")
    later = timezone.now() + timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_S + 1)
    assert service.forget_idempotency_keys(later) == 1
    assert submit_with_key(client, TRAIN, "k-old").status_code == 201


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


def take(client, token, worker="w1", held=(), wait_s=0):
    body = {"worker": worker, "held": [{"job": j, "attempt": a} for j, a in held], "wait_s": wait_s}
    return post(client, "/api/v1/agent/jobs/next", body, token)


@pytest.mark.django_db
def test_a_worker_takes_the_job_placed_on_its_machine_once_streams_its_log_and_finishes(client, placed):
    m, job, token = placed
    r = take(client, token)
    assert r.status_code == 200, r.content
    got = r.json()
    assert (got["job_id"], got["attempt"]) == (job.pk, 1)
    assert got["spec"]["argv"] == ["python", "-m", "hwprobe.workloads", "train"] and got["spec"]["gpus"] == []
    job.refresh_from_db()
    assert job.status == "running" and job.worker_id == "w1" and job.started_at is not None
    assert take(client, token, held=[(job.pk, 1)]).status_code == 204, "a job is handed out once"
    base = f"/api/v1/agent/jobs/{job.pk}"
    hb = post(client, f"{base}/heartbeat", {"attempt": 1, "pid": 10, "pgid": 10}, token)
    assert hb.json() == {"cancel": False, "preempt": False}
    chunk = {"seq": 0, "stream": "stdout", "text": "step 1\n", "ts": time.time()}
    assert post(client, f"{base}/log", {"attempt": 1, "chunks": [chunk]}, token).json() == {"stored": 1}
    assert post(client, f"{base}/log", {"attempt": 1, "chunks": [chunk]}, token).json() == {"stored": 0}
    done = {"attempt": 1, "outcome": "succeeded", "exit_code": 0}
    assert post(client, f"{base}/finish", done, token).status_code == 200
    job.refresh_from_db()
    assert job.status == "succeeded" and job.exit_code == 0 and JobLog.objects.get().text == "step 1\n"
    assert job.attempts.get().outcome == "succeeded"


@pytest.mark.django_db
def test_a_finish_replayed_after_its_answer_was_lost_changes_nothing_and_another_end_is_refused(client, placed):
    m, job, token = placed
    take(client, token)
    base = f"/api/v1/agent/jobs/{job.pk}"
    done = {"attempt": 1, "outcome": "succeeded", "exit_code": 0, "message": "exited with code 0"}
    assert post(client, f"{base}/finish", done, token).status_code == 200
    finished_at = Job.objects.get(pk=job.pk).finished_at
    assert post(client, f"{base}/finish", done, token).status_code == 200, "the same end again: stored once"
    assert Job.objects.get(pk=job.pk).finished_at == finished_at
    r = post(client, f"{base}/finish", {**done, "outcome": "failed", "exit_code": 1}, token)
    assert r.status_code == 409 and "already ended (succeeded)" in r.json()["error"]
    late = {"seq": 5, "stream": "stdout", "text": "last words\n", "ts": time.time()}
    assert post(client, f"{base}/log", {"attempt": 1, "chunks": [late]}, token).json() == {"stored": 1}, (
        "a log replayed after the finish is still the job's log"
    )


@pytest.mark.django_db
def test_another_machine_cannot_take_or_touch_the_job(client, placed):
    _, job, token = placed
    stranger = Machine.objects.create(name="gpu-99").issue_token()
    assert take(client, stranger).status_code == 204
    take(client, token)
    base = f"/api/v1/agent/jobs/{job.pk}"
    assert post(client, f"{base}/heartbeat", {"attempt": 1}, stranger).status_code == 404
    assert post(client, f"{base}/finish", {"attempt": 1, "outcome": "failed"}, stranger).status_code == 404
    chunk = {"seq": 0, "stream": "stdout", "text": "x", "ts": time.time()}
    assert post(client, f"{base}/log", {"attempt": 1, "chunks": [chunk]}, stranger).status_code == 404


@pytest.mark.django_db
def test_the_highest_priority_job_is_taken_first_and_a_cancelled_one_never(client, operator):
    m = online("gpu-01", gpus=0)
    argv = ["python", "-m", "hwprobe.workloads", "train"]
    low = service.submit(operator, {"name": "low", "kind": "train", "argv": argv, "gpus": 0})
    gone = service.submit(operator, {"name": "gone", "kind": "train", "argv": argv, "gpus": 0, "priority": 9})
    high = service.submit(operator, {"name": "high", "kind": "train", "argv": argv, "gpus": 0, "priority": 5})
    place_queued()
    service.cancel(operator, Job.objects.get(pk=gone.pk))
    token = m.issue_token()
    assert [take(client, token).json()["job_id"] for _ in range(2)] == [high.pk, low.pk]
    gone.refresh_from_db()
    assert gone.status == "cancelled" and gone.status_message == "cancelled before it started"


@pytest.mark.django_db
def test_a_worker_that_comes_back_without_an_attempt_it_took_ends_it(client, placed, operator):
    m, job, token = placed
    take(client, token)
    post(client, f"/api/v1/agent/jobs/{job.pk}/heartbeat", {"attempt": 1, "pid": 10, "pgid": 10}, token)
    never = service.submit(operator, {"name": "b", "kind": "train", "argv": ["true"], "gpus": 0})
    place_queued()
    take(client, token, held=[(job.pk, 1)])  # handed over, but say the answer never arrived
    other = take(client, token, worker="w2", held=[])  # another worker of the machine holds nothing of w1's
    assert other.status_code == 204 and Job.objects.get(pk=job.pk).status == "running"
    assert take(client, token, held=[]).status_code == 204  # w1 restarted: it holds nothing
    job.refresh_from_db()
    assert job.status == "lost" and "came back without it" in job.status_message
    never.refresh_from_db()
    assert never.status == "queued" and "never received it" in never.status_message
    assert never.attempts.get().outcome == "unclaimed"


@pytest.mark.django_db
def test_the_agent_config_names_the_machine_and_no_broker(client, machine, agent_token):
    r = client.get("/api/v1/agent/config", HTTP_AUTHORIZATION=f"Bearer {agent_token}")
    assert r.json() == {"machine": "gpu-01", "jobs": "/api/v1/agent/jobs/next", "poll_wait_s": 25}
    assert "broker" not in r.content.decode() and "redis" not in r.content.decode()


@pytest.mark.django_db
def test_cancel_reaches_the_worker_through_its_heartbeat(client, placed, operator):
    m, job, token = placed
    service.claim(m, job.pk, 1)
    service.cancel(operator, job)
    hb = post(client, f"/api/v1/agent/jobs/{job.pk}/heartbeat", {"attempt": 1}, token)
    assert hb.json()["cancel"] is True


def silent_for(job: Job, seconds: float) -> None:
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=seconds))


@pytest.mark.django_db
def test_a_job_whose_worker_went_silent_is_unreachable_not_lost_and_a_heartbeat_makes_it_running(
    client, placed, settings
):
    m, job, token = placed
    service.claim(m, job.pk, 1, worker_id="w1")
    silent_for(job, settings.JOB_UNREACHABLE_AFTER_S + 1)
    assert service.mark_lost() == []
    job.refresh_from_db()
    assert job.status == "unreachable" and job.get_status_display() == "Unreachable"
    assert "may still be running" in job.status_message
    hb = post(client, f"/api/v1/agent/jobs/{job.pk}/heartbeat", {"attempt": 1, "pgid": 10}, token)
    assert hb.status_code == 200
    job.refresh_from_db()
    assert job.status == "running" and "back after" in job.status_message and job.unreachable_since is None


@pytest.mark.django_db
def test_an_unreachable_job_is_lost_once_its_host_is_back_and_its_worker_still_silent(placed, settings):
    m, job, _ = placed
    service.claim(m, job.pk, 1, worker_id="w1")
    silent_for(job, settings.JOB_UNREACHABLE_AFTER_S + 1)
    now = timezone.now()
    service.mark_lost(now)  # unreachable; the host is as silent as the worker (a server outage looks so)
    later = now + timedelta(seconds=settings.JOB_LOST_AFTER_S + 60)
    assert service.mark_lost(later) == [] and Job.objects.get(pk=job.pk).status == "unreachable"
    # its agent reports again
    MachineState.objects.update_or_create(machine_id=m.pk, defaults={"last_seen_at": later + timedelta(seconds=1)})
    back = later + timedelta(seconds=2)
    assert service.mark_lost(back) == []
    assert Job.objects.get(pk=job.pk).host_back_at == back, "the worker gets JOB_LOST_AFTER_S to speak up"
    assert service.mark_lost(back + timedelta(seconds=settings.JOB_LOST_AFTER_S)) == [job.pk]
    job.refresh_from_db()
    assert job.status == "lost" and "reachable again but its worker has said nothing" in job.status_message
    assert job.attempts.get().outcome == "lost"


@pytest.mark.django_db
def test_an_unreachable_job_whose_host_never_comes_back_is_lost_after_the_long_bound(placed, settings):
    m, job, _ = placed
    service.claim(m, job.pk, 1)
    silent_for(job, settings.JOB_UNREACHABLE_AFTER_S + 1)
    now = timezone.now()
    service.mark_lost(now)
    assert service.mark_lost(now + timedelta(seconds=settings.JOB_SILENT_LOST_AFTER_S - 60)) == []
    assert service.mark_lost(now + timedelta(seconds=settings.JOB_SILENT_LOST_AFTER_S + 1)) == [job.pk]
    job.refresh_from_db()
    assert job.status == "lost" and "JOB_SILENT_LOST_AFTER_S" in job.status_message


@pytest.mark.django_db
def test_a_finish_that_arrives_while_the_job_shows_unreachable_ends_it_normally(client, placed, settings):
    m, job, token = placed
    service.claim(m, job.pk, 1)
    silent_for(job, settings.JOB_UNREACHABLE_AFTER_S + 1)
    service.mark_lost()
    r = post(
        client, f"/api/v1/agent/jobs/{job.pk}/finish", {"attempt": 1, "outcome": "succeeded", "exit_code": 0}, token
    )
    assert r.status_code == 200
    assert Job.objects.get(pk=job.pk).status == "succeeded"


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
    "deny_env": ["LD_*", "PYTHONPATH"],
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
