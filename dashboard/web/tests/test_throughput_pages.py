"""Throughput on the pages: the machine, job and fleet cards and the jobs list's column, with and without tokens."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from conftest import make_batch
from dashboard.core.templatetags.units import si
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.payload import Batch
from dashboard.jobs.models import Job, JobAttempt

pytestmark = pytest.mark.django_db


def a_job(owner, machine=None, **kw) -> Job:
    fields = {"name": "tiny-7b", "kind": "train", "argv": ["x"], "gpus": 1} | kw
    if machine is not None:
        fields |= {
            "machine": machine,
            "assigned_gpus": [0],
            "status": "running",
            "attempt": 1,
            "started_at": timezone.now() - timedelta(minutes=5),
        }
    job = Job.objects.create(owner=owner, **fields)
    if machine is not None:
        JobAttempt.objects.create(job=job, number=1, machine=machine, gpus=[0])
    return job


def tokens(machine, job: Job, counts: list[int], kind: str = "train") -> None:
    """Three 10 s windows ending now, GPU 0 at 350 W, carrying ``counts`` tokens of ``kind``."""
    batch = make_batch(range(1, len(counts) + 1), ts=time.time() - 1, gpus=1)
    for sample, n in zip(batch["samples"], counts, strict=False):
        sample["tokens"] = [{"job_id": job.pk, "source": "progress", kind: n}]
    store_batch(machine, Batch.model_validate(batch))


def hidden(page: str, attribute: str) -> bool:
    """Whether the element carrying ``attribute`` (e.g. 'data-kind="train"') has the hidden attribute."""
    tag = re.search(r"<[^>]*" + re.escape(attribute) + r"[^>]*>", page)
    assert tag, attribute
    return " hidden" in tag.group(0)


@pytest.fixture
def training(machine, operator):
    job = a_job(operator, machine)
    tokens(machine, job, [1000, 2000, 3000])  # 100, 200 and 300 tokens/s; 6000 tokens over 10,500 J
    return job


def test_numbers_read_with_three_significant_digits_and_a_prefix():
    assert si(None, "tokens/s") == "—"
    assert si(0, "tokens") == "0 tokens"
    assert si(200.0, "tokens/s") == "200 tokens/s"
    assert si(6000, "tokens") == "6 k tokens"
    assert si(999.6, "tokens/s") == "1 k tokens/s"
    assert si(1_234_567, "tokens") == "1.23 M tokens"
    assert si(6000 / 10500, "tokens/J") == "0.571 tokens/J"
    assert si(0.00004, "tokens/J") == "< 0.001 tokens/J"


def test_the_machine_page_loads_its_throughput_card_as_a_panel(client, viewer, machine, training):
    client.force_login(viewer)
    page = client.get(f"/machines/{machine.name}/").content.decode()
    assert 'data-panel-url="/machines/gpu-01/panels/throughput/"' in page and "Loading throughput" in page
    assert 'id="machine-throughput"' not in page and "6 k tokens" not in page
    assert "js/throughput.js" in page and "js/base.js" in page


def test_the_machine_page_summarises_each_kind_of_tokens_it_has(client, viewer, machine, training):
    client.force_login(viewer)
    page = client.get(f"/machines/{machine.name}/panels/throughput/").content.decode()
    assert "<html" not in page
    assert 'id="machine-throughput"' in page and 'data-tokens="tokens.train"' in page
    assert "6 k tokens" in page and "200 tokens/s" in page and "300 tokens/s" in page and "0.571 tokens/J" in page
    assert not hidden(page, 'data-kind="train"')
    assert hidden(page, 'data-kind="prompt"') and hidden(page, 'data-kind="generated"')
    assert hidden(page, 'class="throughput-empty"')


def test_a_machine_without_tokens_says_how_to_count_them(client, viewer, machine):
    store_batch(machine, Batch.model_validate(make_batch([1], gpus=1)))
    client.force_login(viewer)
    page = client.get(f"/machines/{machine.name}/panels/throughput/").content.decode()
    assert not hidden(page, 'class="throughput-empty"')
    assert "No tokens counted on gpu-01 in this range" in page
    assert "from hwprobe import report" in page and 'report.tokens(n, kind="train")' in page
    assert "/jobs/new/?template=train" in page


def test_the_machine_pages_range_sets_the_summarys_span(client, viewer, machine, operator):
    job = a_job(operator, machine)
    batch = make_batch([1], ts=time.time() - 3 * 3600, gpus=1)
    batch["samples"][0]["tokens"] = [{"job_id": job.pk, "source": "progress", "train": 500}]
    store_batch(machine, Batch.model_validate(batch))
    client.force_login(viewer)
    panel = f"/machines/{machine.name}/panels/throughput/"
    assert hidden(client.get(panel).content.decode(), 'data-kind="train"')
    assert not hidden(client.get(panel + "?range=24h").content.decode(), 'data-kind="train"')


def test_the_job_page_shows_its_throughput_table_and_a_chart_with_gpu_utilisation(client, viewer, training):
    client.force_login(viewer)
    page = client.get(f"/jobs/{training.pk}/").content.decode()
    assert 'id="job-throughput"' in page and 'id="chart-job-throughput"' in page
    assert 'data-kinds="train"' in page and 'data-gpus="1"' in page
    row = re.search(r'<tr data-kind="train">.*?</tr>', page, re.S).group(0)
    for text in ("Training tokens", "6 k tokens", "200 tokens/s", "300 tokens/s", "0.571 tokens/J"):
        assert text in row
    assert hidden(page, 'data-kind="prompt"')
    assert hidden(page, 'class="throughput-empty"')
    # The live state refresh does not carry the card (throughput.js refreshes it from the API).
    assert "job-throughput" not in client.get(f"/jobs/{training.pk}/?partial=1").content.decode()


def test_a_serving_job_charts_generated_and_prompt_tokens(client, viewer, operator, machine):
    job = a_job(operator, machine, kind="serve", name="chat")
    tokens(machine, job, [500, 500, 500], kind="generated")
    client.force_login(viewer)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'data-kinds="generated prompt"' in page
    assert not hidden(page, 'data-kind="generated"') and "50 tokens/s" in page


def test_a_job_without_tokens_says_how_to_report_them(client, viewer, operator):
    job = a_job(operator)
    client.force_login(viewer)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'No tokens counted for this job<span class="not-started"> yet: it has not started</span>' in page
    assert hidden(page, 'class="throughput-body"') and not hidden(page, 'class="throughput-empty"')
    assert "data-gpus" not in page  # not placed: no GPU utilisation to ask for


def test_the_jobs_list_shows_mean_peak_and_total_tokens_of_each_jobs_main_kind(client, viewer, operator, training):
    idle = a_job(operator, name="idle-job")
    client.force_login(viewer)
    for url in ("/jobs/", "/jobs/?partial=1"):
        page = client.get(url).content.decode()
        assert '<th class="num">Throughput</th>' in page
        row = re.search(rf"<tr>\s*<td class=\"num\"><a href=\"/jobs/{training.pk}/\">.*?</tr>", page, re.S).group(0)
        assert "200 tokens/s" in row and "peak 300" in row and "6 k tokens" in row
        idle_row = re.search(rf"<tr>\s*<td class=\"num\"><a href=\"/jobs/{idle.pk}/\">.*?</tr>", page, re.S).group(0)
        assert "—" in idle_row and "tokens/s" not in idle_row


def test_the_machine_pages_jobs_table_has_no_throughput_column(client, viewer, machine, training):
    client.force_login(viewer)
    page = client.get(f"/machines/{machine.name}/panels/jobs/").content.decode()
    jobs_table = page[page.index('id="machine-jobs"') :]
    assert "Throughput</th>" not in jobs_table


def test_the_fleet_page_charts_the_fleets_throughput(client, viewer, machine, training):
    client.force_login(viewer)
    for url in ("/", "/?partial=1"):
        page = client.get(url).content.decode()
        assert "Fleet throughput" in page
        assert not hidden(page, 'data-kind="train"') and hidden(page, 'data-kind="generated"')
        assert hidden(page, 'class="throughput-empty muted"')


def test_the_fleet_page_says_when_no_tokens_came_in_the_last_hour(client, viewer, machine):
    store_batch(machine, Batch.model_validate(make_batch([1], gpus=1)))
    client.force_login(viewer)
    page = client.get("/").content.decode()
    assert "No tokens counted in this range" in page and not hidden(page, 'class="throughput-empty muted"')
    assert "/jobs/new/?template=serve" in page


def test_an_empty_fleet_has_no_throughput_card(client, viewer):
    client.force_login(viewer)
    assert "Fleet throughput" not in client.get("/").content.decode()


def test_the_machine_page_notes_dropped_token_reports_and_a_taken_udp_port(client, viewer, machine):
    batch = make_batch([1, 2], gpus=0)
    batch["samples"][0]["tokens_dropped"] = 2
    batch["samples"][1]["tokens_dropped"] = 1
    batch["samples"][1]["report_udp"] = False
    store_batch(machine, Batch.model_validate(batch))
    client.force_login(viewer)
    page = client.get(f"/machines/{machine.name}/").content.decode()
    assert "3 token reports dropped" in page and "UDP report port taken" in page


def test_a_machine_whose_agent_listens_shows_no_note(client, viewer, machine):
    batch = make_batch([1], gpus=0)
    batch["samples"][0]["report_udp"] = True
    store_batch(machine, Batch.model_validate(batch))
    client.force_login(viewer)
    page = client.get(f"/machines/{machine.name}/").content.decode()
    assert "token report" not in page and "UDP report port taken" not in page
