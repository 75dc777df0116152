"""The jobs pages: who may see, submit and cancel; the form's errors; the machine page's jobs."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta

import pytest
from celery import current_app

from conftest import make_batch
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import Batch
from dashboard.jobs import placement, service
from dashboard.jobs.models import AuditEvent, Job

pytestmark = pytest.mark.django_db

TRAIN = "python -m hwprobe.workloads train --seconds 60"


@pytest.fixture
def online(machine) -> Machine:
    store_batch(machine, Batch.model_validate(make_batch([1])))  # 2 GPUs, about 42 GiB free each
    machine.refresh_from_db()
    return machine


@pytest.fixture
def other_operator(django_user_model):
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create_user("oscar", password="oscar-pass")
    user.groups.add(Group.objects.get_or_create(name="operator")[0])
    return user


def a_job(owner, **kw) -> Job:
    fields = {"name": "train-demo", "kind": "train", "argv": TRAIN.split(), "gpus": 1, "gpu_memory_gb": 4} | kw
    return Job.objects.create(owner=owner, **fields)


def form(**kw) -> dict:
    return {
        "name": "train-demo",
        "kind": "train",
        "command": TRAIN,
        "gpus": "1",
        "gpu_memory_gb": "4",
        "machine": "",
        "priority": "0",
        "max_runtime_s": "",
        "workdir": "",
        "env": "",
    } | kw


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    """Placement is enqueued on commit; here we only count the calls (no broker in unit tests)."""
    calls = []
    monkeypatch.setattr(current_app, "send_task", lambda name, **options: calls.append(1))
    return calls


def test_a_stranger_is_sent_to_the_login_page(client, operator):
    job = a_job(operator)
    for url in ("/jobs/", "/jobs/?partial=1", "/jobs/new/", f"/jobs/{job.pk}/", f"/jobs/{job.pk}/?partial=1"):
        r = client.get(url)
        assert r.status_code == 302 and r["Location"].startswith("/login/?next="), url
    assert client.post(f"/jobs/{job.pk}/cancel/")["Location"].startswith("/login/")


def test_a_viewer_sees_jobs_but_no_submit_button_and_no_cancel(client, viewer, operator):
    job = a_job(operator, status_message="needs 2 × 40 GiB; the largest free is 1 × 24 GiB on gpu-01")
    client.force_login(viewer)
    listing = client.get("/jobs/").content.decode()
    assert "train-demo" in listing and "Queued" in listing and "olga" in listing
    assert "Submit job" not in listing
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "needs 2 × 40 GiB; the largest free is 1 × 24 GiB on gpu-01" in page
    assert TRAIN in page
    assert "Cancel job" not in page


def test_what_a_job_needs_reads_in_words_with_no_zero_gib(client, viewer, operator):
    some = a_job(operator, name="any-memory", gpus=2, gpu_memory_gb=0)
    sized = a_job(operator, name="sized", gpus=1, gpu_memory_gb=40)
    cpu = a_job(operator, name="cpu-only", gpus=0, gpu_memory_gb=0)
    client.force_login(viewer)
    listing = client.get("/jobs/").content.decode()
    assert "2 GPUs</span>" in listing and "1 GPU × 40 GiB</span>" in listing and "× 0 GiB" not in listing
    assert "Needs</dt><dd>2 GPUs</dd>" in client.get(f"/jobs/{some.pk}/").content.decode()
    assert "Needs</dt><dd>1 GPU × 40 GiB free</dd>" in client.get(f"/jobs/{sized.pk}/").content.decode()
    assert "Needs</dt><dd>no GPU</dd>" in client.get(f"/jobs/{cpu.pk}/").content.decode()


def test_a_viewer_gets_a_403_on_the_form_and_on_cancel(client, viewer, operator):
    job = a_job(operator)
    client.force_login(viewer)
    r = client.get("/jobs/new/")
    assert r.status_code == 403 and "Only operators and admins may submit jobs" in r.content.decode()
    assert client.post("/jobs/new/", form()).status_code == 403
    assert client.post(f"/jobs/{job.pk}/cancel/").status_code == 403
    assert not Job.objects.exclude(pk=job.pk).exists()
    job.refresh_from_db()
    assert job.status == "queued" and not job.cancel_requested


def test_an_operator_submits_a_job_and_lands_on_its_page(
    client, operator, online, no_broker, django_capture_on_commit_callbacks
):
    client.force_login(operator)
    assert "Submit job" in client.get("/jobs/").content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        r = client.post(
            "/jobs/new/",
            form(
                machine="gpu-01",
                env="HF_HOME=/data/hf\n\nA=1=2",
                max_runtime_s="600",
                preemptible="on",
                workdir="/srv/work",
            ),
        )
    job = Job.objects.get()
    assert r.status_code == 302 and r["Location"] == f"/jobs/{job.pk}/"
    assert job.owner == operator and job.target == online
    assert job.argv == ["python", "-m", "hwprobe.workloads", "train", "--seconds", "60"] and job.shell == ""
    assert job.env == {"HF_HOME": "/data/hf", "A": "1=2"}
    assert (job.gpus, job.gpu_memory_gb, job.max_runtime_s, job.preemptible, job.workdir) == (
        1,
        4.0,
        600,
        True,
        "/srv/work",
    )
    event = AuditEvent.objects.get()
    assert (event.action, event.actor, event.job) == ("job.submit", operator, job)
    assert no_broker == [1]  # placement enqueued once the job was committed
    assert f"Job #{job.pk} submitted." in client.get(r["Location"]).content.decode()


def test_the_command_is_split_like_a_shell_would_or_sent_as_a_shell_string(client, operator):
    client.force_login(operator)
    client.post("/jobs/new/", form(command="python -c 'print(1 + 1)'"))
    client.post("/jobs/new/", form(command="nvidia-smi && sleep 5", shell="on"))
    split, shell = Job.objects.order_by("pk")
    assert split.argv == ["python", "-c", "print(1 + 1)"] and split.shell == ""
    assert shell.argv is None and shell.shell == "nvidia-smi && sleep 5"


def test_every_error_is_shown_at_once_next_to_its_field_in_the_operators_words(client, operator, online):
    client.force_login(operator)
    r = client.post(
        "/jobs/new/",
        form(
            name="",
            env="HF_HOME=/x\nnot a pair",
            machine="nope",
            gpu_memory_gb="1e12",
            gpus="-1",
            max_runtime_s="0",
            command="python -c 'oops",
        ),
    )
    assert r.status_code == 200
    assert {k: [str(e) for e in v] for k, v in r.context["form"].errors.items()} == {
        "name": ["This field is required."],
        "env": ["line 2: write KEY=VALUE (got 'not a pair')"],
        "command": ["cannot split it into arguments: No closing quotation"],
        "gpus": ["must be 0 or more"],
        "gpu_memory_gb": ["must be at most 4,096 GiB"],
        "max_runtime_s": ["must be 1 s or more"],
        "machine": ["no machine named 'nope'"],
    }
    assert not Job.objects.exists()
    page = r.content.decode()
    # Each error sits inside its own field's block.
    for field, text in (
        ("env", "line 2: write KEY=VALUE"),
        ("gpu_memory_gb", "at most 4,096 GiB"),
        ("gpus", "0 or more"),
    ):
        block = page.split(f'id="field-{field}"')[1].split('class="field')[0]
        assert text in block

    r = client.post("/jobs/new/", form(env="1BAD=x"))
    assert r.context["form"].errors == {
        "env": ["1BAD is not a valid variable name: use letters, digits and _, not starting with a digit"]
    }
    r = client.post("/jobs/new/", form(command="x" * 5000))
    assert r.context["form"].errors["command"] == ["argument 1: at most 4,096 characters"]
    r = client.post("/jobs/new/", form(name="", kind="batch"))
    assert set(r.context["form"].errors) == {"name", "kind"}
    assert not Job.objects.exists()


def test_the_machine_select_shows_free_memory_per_gpu_and_offline_machines(client, operator, online, settings):
    Machine.objects.create(name="gpu-02")
    client.force_login(operator)
    page = client.get("/jobs/new/").content.decode()
    assert re.search(r'<option value="" selected data-policy="[^"]*">Automatic placement</option>', page)
    # 85,520,809,984 B total and 40e9 used: 42 of 80 GiB free on each GPU.
    assert "gpu-01 — 2 × H100 80GB HBM3 · free 42 / 80 GiB, 42 / 80 GiB" in page
    assert "gpu-02 — no GPUs · offline" in page
    assert "python -m hwprobe.workloads serve --port 8100 --load 2 --seconds 60" in page


def test_a_template_prefills_the_form(client, operator):
    client.force_login(operator)
    form_ = client.get("/jobs/new/?template=serve").context["form"]
    assert form_["kind"].value() == "serve"
    assert form_["command"].value() == "python -m hwprobe.workloads serve --port 8100 --load 2 --seconds 60"
    assert client.get("/jobs/new/?template=train").context["form"]["kind"].value() == "train"


def test_an_operator_cancels_their_job_and_it_is_audited(client, operator):
    job = a_job(operator)
    client.force_login(operator)
    assert "Cancel job" in client.get(f"/jobs/{job.pk}/").content.decode()
    r = client.post(f"/jobs/{job.pk}/cancel/", follow=True)
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert "Job cancelled." in r.content.decode()
    assert AuditEvent.objects.filter(action="job.cancel", actor=operator, job=job).exists()
    # Cancelling again says why nothing happened.
    r = client.post(f"/jobs/{job.pk}/cancel/", follow=True)
    assert "has already ended" in r.content.decode()


def test_an_operator_cannot_cancel_another_operators_job_but_an_admin_can(client, operator, other_operator, admin_user):
    job = a_job(other_operator)
    client.force_login(operator)
    assert "Cancel job" not in client.get(f"/jobs/{job.pk}/").content.decode()
    assert client.post(f"/jobs/{job.pk}/cancel/").status_code == 403
    job.refresh_from_db()
    assert job.status == "queued"
    client.force_login(admin_user)
    assert "Cancel job" in client.get(f"/jobs/{job.pk}/").content.decode()
    client.post(f"/jobs/{job.pk}/cancel/")
    job.refresh_from_db()
    assert job.status == "cancelled"


def test_cancel_is_a_post(client, operator):
    job = a_job(operator)
    client.force_login(operator)
    assert client.get(f"/jobs/{job.pk}/cancel/").status_code == 405


def test_the_list_filters_by_status_machine_kind_and_owner(client, viewer, operator, other_operator, online):
    a_job(operator, name="alpha")
    a_job(other_operator, name="bravo", kind="serve")
    placement.place_queued()
    a_job(operator, name="charlie", status="succeeded")
    client.force_login(viewer)

    def names(query: str) -> set[str]:
        return {j.name for j in client.get("/jobs/?" + query).context["jobs"]}

    assert names("") == {"alpha", "bravo", "charlie"}
    assert names("status=succeeded") == {"charlie"}
    assert names("kind=serve") == {"bravo"}
    assert names("owner=oscar") == {"bravo"}
    assert names("machine=gpu-01") == {"alpha", "bravo"}
    assert names("status=failed") == set()
    assert "No job matches these filters" in client.get("/jobs/?status=failed").content.decode()


def test_the_list_partial_is_the_table_alone_with_times_for_the_browser(client, viewer, operator):
    a_job(operator)
    client.force_login(viewer)
    page = client.get("/jobs/?partial=1").content.decode()
    assert "<html" not in page and "train-demo" in page
    assert '<time datetime="' in page and " UTC</time>" in page


def test_a_running_job_shows_machine_gpus_attempts_and_a_live_log_url(client, viewer, operator, online):
    job = a_job(operator)
    placement.place_queued()
    service.claim(online, job.pk, 1)
    client.force_login(viewer)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Running" in page and "running on gpu-01" in page and "GPU 0" in page
    assert f"/api/v1/jobs/{job.pk}/log" in page
    assert "data-running-since" in page
    state = client.get(f"/jobs/{job.pk}/?partial=1").content.decode()
    assert 'id="job-state"' in state and 'id="job-attempts"' in state and "<html" not in state


def test_the_machine_page_lists_its_running_and_recent_jobs(client, viewer, operator, online):
    running = a_job(operator, name="now-running")
    placement.place_queued()
    service.claim(online, running.pk, 1)
    done = a_job(operator, name="long-done")
    placement.place_queued()
    service.claim(online, done.pk, 1)
    service.finish(online, done.pk, 1, "succeeded", 0, "")
    a_job(operator, name="elsewhere")  # queued, on no machine
    client.force_login(viewer)
    page = client.get(f"/machines/{online.name}/panels/jobs/").content.decode()
    section = page.split('id="machine-jobs"')[1]
    assert "now-running" in section and "long-done" in section and "Succeeded" in section
    assert "elsewhere" not in section
    assert section.index("now-running") < section.index("long-done")


def test_the_nav_links_to_jobs(client, viewer):
    client.force_login(viewer)
    assert 'href="/jobs/"' in client.get("/").content.decode()


def test_an_unknown_job_is_a_404(client, viewer):
    client.force_login(viewer)
    assert client.get("/jobs/999/").status_code == 404


def test_cancelling_a_running_job_asks_its_worker_to_stop_it(client, operator, online):
    job = a_job(operator)
    placement.place_queued()
    service.claim(online, job.pk, 1)
    client.force_login(operator)
    r = client.post(f"/jobs/{job.pk}/cancel/", follow=True)
    job.refresh_from_db()
    assert job.status == "running" and job.cancel_requested
    page = r.content.decode()
    assert "Cancel requested: the worker is stopping the job." in page
    assert "Stopping…" in page and "cancel requested by olga; stopping" in page


def test_the_form_takes_a_metrics_url_and_a_progress_pattern(client, operator):
    client.force_login(operator)
    page = client.get("/jobs/new/").content.decode()
    assert 'id="field-metrics_url"' in page and '<option value="hf-trainer">' in page
    client.post(
        "/jobs/new/", form(kind="serve", metrics_url="http://127.0.0.1:8000/metrics", progress_pattern="hf-trainer")
    )
    client.post("/jobs/new/", form(progress_pattern=r"seen (?P<tokens>\d+)"))
    preset, custom = Job.objects.order_by("pk")
    assert (preset.metrics_url, preset.progress_pattern) == ("http://127.0.0.1:8000/metrics", "hf-trainer")
    assert (custom.metrics_url, custom.progress_pattern) == ("", r"seen (?P<tokens>\d+)")


def test_a_progress_pattern_without_a_tokens_group_is_shown_next_to_its_field(client, operator):
    client.force_login(operator)
    r = client.post("/jobs/new/", form(progress_pattern=r"step (\d+)", metrics_url="ftp://x"))
    errors = r.context["form"].errors
    assert errors["metrics_url"] and not Job.objects.exists()
    r = client.post("/jobs/new/", form(progress_pattern=r"step (\d+)"))
    assert r.context["form"].errors["progress_pattern"][0].startswith("needs a named group (?P<tokens>...)")
    block = r.content.decode().split('id="field-progress_pattern"')[1].split('class="field')[0]
    assert "needs a named group" in block


def test_the_form_takes_the_model_and_the_job_page_shows_it(client, operator):
    client.force_login(operator)
    page = client.get("/jobs/new/").content.decode()
    assert 'id="model-fields"' in page and "<legend>Model</legend>" in page
    assert (
        'id="field-model_params_b"' in page and '<option value="int4">' in page and 'id="field-context_tokens"' in page
    )
    r = client.post("/jobs/new/", form(kind="serve", model_params_b="70.6", precision="int4", context_tokens="32768"))
    job = Job.objects.get()
    assert r.status_code == 302 and r["Location"] == f"/jobs/{job.pk}/"
    assert (job.model_params_b, job.precision, job.context_tokens) == (70.6, "int4", 32768)
    shown = client.get(f"/jobs/{job.pk}/").content.decode().split('id="job-model"')[1].split("</dd>")[0]
    assert "70.6 B parameters" in shown and "int4" in shown and "32768-token context" in shown


def test_the_model_fields_may_stay_empty(client, operator):
    client.force_login(operator)
    client.post("/jobs/new/", form(model_params_b="", precision="", context_tokens=""))
    job = Job.objects.get()
    assert (job.model_params_b, job.precision, job.context_tokens) == (None, "", None)
    shown = client.get(f"/jobs/{job.pk}/").content.decode().split('id="job-model"')[1].split("</dd>")[0]
    assert "not given" in shown


def test_a_bad_model_field_is_shown_next_to_it(client, operator):
    client.force_login(operator)
    r = client.post("/jobs/new/", form(model_params_b="0", precision="fp64", context_tokens="0"))
    errors = r.context["form"].errors
    assert errors["precision"][0].startswith("Select a valid choice")  # the select's own check, before JobIn
    r = client.post("/jobs/new/", form(model_params_b="20000", context_tokens="0"))
    errors = r.context["form"].errors
    assert errors["model_params_b"] == ["must be at most 10,000"]
    assert errors["context_tokens"] == ["must be 1 or more"]
    block = r.content.decode().split('id="field-model_params_b"')[1].split('class="field')[0]
    assert "at most 10,000" in block
    r = client.post("/jobs/new/", form(model_params_b="0"))
    assert r.context["form"].errors == {"model_params_b": ["must be more than 0"]}
    assert not Job.objects.exists()


# ---- templates the hosts allow ------------------------------------------------------------------

HOST_POLICY = {
    "builtin_workloads": False,
    "allow_shell": False,
    "run_as": None,
    "templates": [
        {"name": "llama-finetune", "argv": ["python3", "train.py", "*"], "workdir": None},
        {"name": "vllm", "argv": ["vllm", "serve", "**"], "workdir": "/srv/*"},
    ],
}


def option_policies(page: str) -> dict[str, dict]:
    """Each machine option's data-policy, as the page's script reads it."""
    return {
        value: json.loads(html.unescape(raw))
        for value, raw in re.findall(r'<option value="([^"]*)"[^>]* data-policy="([^"]*)"', page)
    }


def picker_commands(page: str) -> list[str]:
    """The template buttons the page renders without any script."""
    block = page.split('id="field-templates"')[1].split('class="field')[0]
    return [
        html.unescape(c)
        for c in re.findall(r'<button type="button" class="template"[^>]* data-command="([^"]*)"', block)
    ]


def test_each_machine_option_carries_the_templates_its_worker_reported(client, operator, online):
    Machine.objects.filter(pk=online.pk).update(worker_policy=HOST_POLICY)
    Machine.objects.create(name="gpu-02")
    client.force_login(operator)
    policies = option_policies(client.get("/jobs/new/").content.decode())
    gpu01 = policies["gpu-01"]
    assert [t["command"] for t in gpu01["templates"]] == ["python3 train.py *", "vllm serve **"]
    assert gpu01["templates"][1]["workdir"] == "/srv/*"
    assert (gpu01["reported"], gpu01["allow_shell"], gpu01["note"]) == (True, False, "argument lists only")
    assert policies["gpu-02"]["templates"] == []
    assert policies["gpu-02"]["note"] == "no worker has reported from this machine yet — jobs wait until one does"


def test_the_picker_is_rendered_for_the_chosen_machine_without_any_script(client, operator, online):
    client.force_login(operator)
    page = client.get("/jobs/new/").content.decode()
    # Automatic placement with no worker reported: the built-in workloads.
    assert picker_commands(page) == [
        "python -m hwprobe.workloads train --seconds 60",
        "python -m hwprobe.workloads serve --port 8100 --load 2 --seconds 60",
    ]
    Machine.objects.filter(pk=online.pk).update(worker_policy={**HOST_POLICY, "allow_shell": True})
    page = client.post("/jobs/new/", form(machine="gpu-01", name="")).content.decode()  # re-shown for its error
    assert picker_commands(page) == ["python3 train.py *", "vllm serve **"]
    assert '<span id="templates-note">shell allowed</span>' in page


def test_automatic_placement_offers_what_every_online_worker_allows(client, operator, online, settings):
    other = Machine.objects.create(name="gpu-02")
    store_batch(other, Batch.model_validate(make_batch([1])))
    Machine.objects.filter(pk=online.pk).update(worker_policy=HOST_POLICY)
    Machine.objects.filter(pk=other.pk).update(worker_policy={**HOST_POLICY, "templates": HOST_POLICY["templates"][:1]})
    # An offline machine's old report does not narrow the choice.
    stale = Machine.objects.create(
        name="gpu-03",
        worker_policy={**HOST_POLICY, "templates": []},
        last_seen_at=online.last_seen_at - timedelta(seconds=settings.OFFLINE_AFTER_S + 60),
    )
    assert not stale.is_online()
    client.force_login(operator)
    automatic = option_policies(client.get("/jobs/new/").content.decode())[""]
    assert [t["command"] for t in automatic["templates"]] == ["python3 train.py *"]
    assert automatic["note"] == "templates every online machine's worker allows · argument lists only"


def test_a_command_the_target_machines_worker_refuses_is_shown_next_to_the_command(client, operator, online):
    Machine.objects.filter(pk=online.pk).update(worker_policy=HOST_POLICY)
    client.force_login(operator)
    r = client.post("/jobs/new/", form(machine="gpu-01", command="rm -rf /"))
    assert r.status_code == 200
    assert r.context["form"].errors == {
        "command": ["gpu-01's worker allows only: python3 train.py *; vllm serve ** (in /srv/*)"]
    }
    block = r.content.decode().split('id="field-command"')[1].split('class="field')[0]
    assert "gpu-01&#x27;s worker allows only" in block
    assert "worker decides whether it runs" in block  # the help text says the worker has the last word
    # The built-in workloads are not allowed there either, and shell lines are refused.
    assert "allows only" in client.post("/jobs/new/", form(machine="gpu-01")).context["form"].errors["command"][0]
    r = client.post("/jobs/new/", form(machine="gpu-01", command="python3 train.py --lr 3", shell="on"))
    assert r.context["form"].errors["command"][0].startswith("gpu-01's worker takes argument lists only")
    # A workdir pattern is part of the rule.
    r = client.post("/jobs/new/", form(machine="gpu-01", command="vllm serve m --port 8000", workdir="/tmp"))
    assert "allows only" in r.context["form"].errors["command"][0]
    assert not Job.objects.exists()


def test_a_command_that_fits_a_template_is_submitted(client, operator, online):
    Machine.objects.filter(pk=online.pk).update(worker_policy=HOST_POLICY)
    client.force_login(operator)
    assert (
        client.post("/jobs/new/", form(machine="gpu-01", command="python3 train.py --config=a.yaml")).status_code == 302
    )
    assert (
        client.post(
            "/jobs/new/", form(machine="gpu-01", command="vllm serve m --port 8000", workdir="/srv/models")
        ).status_code
        == 302
    )
    assert Job.objects.count() == 2


def test_the_built_in_workloads_pass_with_any_interpreter_where_the_worker_allows_them(client, operator, online):
    Machine.objects.filter(pk=online.pk).update(worker_policy={**HOST_POLICY, "builtin_workloads": True})
    client.force_login(operator)
    r = client.post("/jobs/new/", form(machine="gpu-01", command="/opt/venv/bin/python3 -m hwprobe.workloads train"))
    assert r.status_code == 302, r.context["form"].errors


def test_the_form_does_not_block_where_nothing_is_known_or_the_machine_is_not_chosen(client, operator, online):
    client.force_login(operator)
    # No worker has reported from gpu-01: its worker decides when it comes.
    assert client.post("/jobs/new/", form(machine="gpu-01", command="rm -rf /tmp/x")).status_code == 302
    Machine.objects.filter(pk=online.pk).update(worker_policy=HOST_POLICY)
    # Automatic placement is never blocked: placement may find a machine that allows it.
    assert client.post("/jobs/new/", form(machine="", command="rm -rf /tmp/x")).status_code == 302
    assert Job.objects.count() == 2
