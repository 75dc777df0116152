"""A job's life in a real browser: an operator submits it, then watches it placed, run, log and finish.

The worker's part is played here through the server functions it reaches over HTTP, so the page
must notice each change by itself. Drives Debian's chromium through Playwright.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from django.db import connections

from conftest import BROWSER_ZONE as ZONE
from conftest import SCREENSHOTS, log_in, make_batch
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import Batch
from dashboard.jobs import placement, service, tasks
from dashboard.jobs.models import Job

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

TRAIN = "python -m hwprobe.workloads train --seconds 60"


@pytest.fixture
def fleet(transactional_db, django_user_model, monkeypatch):
    from django.contrib.auth.models import Group

    olga = django_user_model.objects.create_user("olga", password="olga-pass")
    olga.groups.add(Group.objects.get_or_create(name="operator")[0])
    cpu_box = Machine.objects.create(name="cpu-01")
    store_batch(cpu_box, Batch.model_validate(make_batch([1], gpus=0)))
    Machine.objects.create(name="gpu-09")  # enrolled, never seen: offline
    # The test places the job itself, when it chooses, instead of a Celery worker.
    monkeypatch.setattr(tasks.place, "delay", lambda: None)
    return cpu_box


def worker(fn, *args):
    """Call ``fn`` in a thread of its own, as a worker would, with a database connection closed after.

    Not in this thread: Playwright runs an event loop here, where Django refuses the ORM and
    would keep a connection per context that nothing closes.
    """

    def call():
        try:
            return fn(*args)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


def test_an_operator_submits_a_job_and_watches_it_run_log_and_finish(fleet, live_server, page):
    base = live_server.url
    log_in(page, base, "olga", "olga-pass", then="/jobs/")
    assert "No jobs yet" in page.inner_text("#jobs")

    page.click("text=Submit job")
    page.wait_for_url(base + "/jobs/new/")
    options = page.locator("#id_machine option").all_inner_texts()
    assert options[0] == "Automatic placement"
    assert "cpu-01 — no GPUs" in options and "gpu-09 — no GPUs · offline" in options
    page.fill("#id_name", "first-train")
    page.select_option("#id_kind", "train")
    page.fill("#id_command", TRAIN)
    page.fill("#id_gpus", "0")
    page.fill("#id_gpu_memory_gb", "0")
    page.select_option("#id_machine", "cpu-01")
    page.fill("#id_env", "EPOCHS=3")
    page.click("form.job-form button[type=submit]")

    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    job = worker(Job.objects.get)
    assert page.url == f"{base}/jobs/{job.pk}/"
    assert page.inner_text("#job-state .status") == "Queued"
    assert TRAIN in page.inner_text("pre.command")
    # Times are shown in the browser's zone, not the server's UTC.
    created = page.get_attribute("#job-state time", "datetime")
    local = datetime.fromisoformat(created).astimezone(ZoneInfo(ZONE)).strftime("%Y-%m-%d %H:%M:%S")
    assert page.inner_text("#job-state time") == local

    # The worker's part: placed, claimed, a few lines of log, then done.
    assert [p.machine for p in worker(placement.place_queued)] == ["cpu-01"]
    worker(service.claim, fleet, job.pk, 1)
    page.wait_for_function(
        "document.querySelector('#job-state .status').textContent.trim() === 'Running'", timeout=15000
    )
    now = time.time()
    worker(
        service.append_log,
        fleet,
        job.pk,
        1,
        [
            {"seq": 0, "stream": "stdout", "text": "epoch 1/3 loss 0.912\nepoch 2/3 loss 0.544\n", "ts": now},
            {"seq": 1, "stream": "stderr", "text": "warning: no GPU visible, training on the CPU\n", "ts": now},
            {"seq": 2, "stream": "stdout", "text": "epoch 3/3 loss 0.301\n", "ts": now},
        ],
    )
    page.wait_for_selector("#job-log .stderr", timeout=15000)
    worker(
        service.append_log,
        fleet,
        job.pk,
        1,
        [{"seq": 3, "stream": "stdout", "text": "saved checkpoint to ./ckpt\n", "ts": time.time()}],
    )
    worker(service.finish, fleet, job.pk, 1, "succeeded", 0, "")
    page.wait_for_function(
        "document.querySelector('#job-state .status').textContent.trim() === 'Succeeded'", timeout=15000
    )

    log = page.inner_text("#job-log")
    assert "epoch 1/3 loss 0.912" in log and "saved checkpoint to ./ckpt" in log
    assert log.index("epoch 3/3") < log.index("saved checkpoint")
    stderr_color = page.eval_on_selector("#job-log .stderr", "el => getComputedStyle(el).color")
    stdout_color = page.eval_on_selector("#job-log .stdout", "el => getComputedStyle(el).color")
    assert stderr_color != stdout_color
    assert "Cancel job" not in page.inner_text("#job-state")
    attempts = page.inner_text("#job-attempts")
    assert "cpu-01" in attempts and "succeeded" in attempts
    page.wait_for_timeout(300)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "job.png"), full_page=True)

    page.click("text=All jobs")
    page.wait_for_url(base + "/jobs/")
    assert "Succeeded" in page.inner_text("#jobs") and "first-train" in page.inner_text("#jobs")
    assert page.errors == []


def test_the_template_picker_follows_the_machine_and_fills_the_command(fleet, live_server, page):
    reported = {
        "builtin_workloads": False,
        "allow_shell": False,
        "run_as": None,
        "templates": [{"name": "ft", "argv": ["python3", "train.py", "*"], "workdir": "/srv/llama*"}],
    }
    worker(lambda: Machine.objects.filter(pk=fleet.pk).update(worker_policy=reported))
    log_in(page, live_server.url, "olga", "olga-pass", then="/jobs/new/")
    # Automatic placement: what every online machine's worker allows (cpu-01 is the only one online).
    assert page.locator("#templates button.template").all_inner_texts() == ["python3 train.py *"]
    page.select_option("#id_machine", "gpu-09")
    assert page.locator("#templates button.template").count() == 0
    assert (
        page.inner_text("#templates-note") == "no worker has reported from this machine yet — jobs wait until one does"
    )
    page.select_option("#id_machine", "cpu-01")
    assert page.inner_text("#templates-note") == "argument lists only"
    page.click("#templates button.template")
    assert page.input_value("#id_command") == "python3 train.py *"
    assert page.input_value("#id_workdir") == "/srv/llama*"
    assert (
        page.evaluate(
            "(() => { const c = document.getElementById('id_command'); "
            "return c.value.slice(c.selectionStart, c.selectionEnd); })()"
        )
        == "*"
    )
    page.keyboard.type("--epochs=3")
    assert page.input_value("#id_command") == "python3 train.py --epochs=3"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "submit.png"), full_page=True)
    assert page.errors == []
