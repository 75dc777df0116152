"""The pages in a real browser: log in, see the fleet, see a machine's charts drawn from the API.

Drives Debian's chromium through Playwright (never `playwright install`); saves the screenshots the
README shows.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from conftest import BROWSER_ZONE as ZONE
from conftest import SCREENSHOTS, log_in, make_inventory, make_sample
from dashboard.fleet import rollup
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import parse_batch
from dashboard.jobs.models import Job, JobAttempt

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CHARTS = (
    "chart-cpu",
    "chart-ram",
    "chart-gpu-util",
    "chart-gpu-mem",
    "chart-gpu-power",
    "chart-gpu-temp",
    "chart-tokens-train",
    "chart-tokens-prompt",
    "chart-tokens-generated",
)
DRAWN = (
    "id => { const el = document.getElementById(id);"
    " return el && el.data && el.data.length && el.data[0].x.length > 0; }"
)


def send(machine: Machine, samples: list[dict], gpus: int, **kw) -> None:
    batch = {"agent_version": "0.1.0", "dropped": 0, "inventory": make_inventory(gpus), "samples": samples}
    store_batch(machine, parse_batch(json.dumps(batch).encode()), **kw)


def add_tokens(samples: list[dict], train_job: int, serve_job: int) -> None:
    """A training job's tokens on every window, a serving job's from the second half-hour on."""
    for i, sample in enumerate(samples):
        level = 0.6 + 0.3 * math.sin(i / 40)
        sample["tokens"] = [{"job_id": train_job, "source": "progress", "train": int(180_000 * level)}]
        if i >= 180:
            sample["tokens"].append(
                {
                    "job_id": serve_job,
                    "source": "prometheus",
                    "prompt": int(9_000 * level),
                    "generated": int(12_000 * level),
                }
            )


def an_hour_of_samples(gpus: int) -> list[dict]:
    now = time.time()
    samples = []
    for i in range(360):  # 10 s windows
        wave = math.sin(i / 25)
        sample = make_sample(i + 1, now - 10 * (359 - i), gpus=gpus, cpu=40 + 25 * wave, util=60 + 30 * wave)
        for g, gpu in enumerate(sample["gpus"]):
            level = 0.5 + 0.4 * math.sin(i / 25 + g)
            gpu["util_percent"] = {
                "min": max(0, 100 * level - 15),
                "mean": 100 * level,
                "max": min(100, 100 * level + 15),
            }
            gpu["power_watts"] = {
                "min": 150 + 450 * level - 30,
                "mean": 150 + 450 * level,
                "max": 150 + 450 * level + 30,
            }
            gpu["temp_c"] = {"min": 40 + 35 * level - 1, "mean": 40 + 35 * level, "max": 40 + 35 * level + 1}
            used = 20e9 + 50e9 * level
            gpu["mem_used_bytes"] = {"min": used - 1e8, "mean": used, "max": used + 1e8}
        samples.append(sample)
    return samples


@pytest.fixture
def fleet(transactional_db, django_user_model):
    victor = django_user_model.objects.create_user("victor", password="victor-pass")
    gpu_box = Machine.objects.create(name="gpu-01")
    started = datetime.fromtimestamp(time.time() - 3660, ZoneInfo("UTC"))
    jobs = [
        Job.objects.create(
            owner=victor,
            name=name,
            kind=kind,
            argv=["x"],
            gpus=len(gpus),
            machine=gpu_box,
            assigned_gpus=gpus,
            status="running",
            started_at=started,
            attempt=1,
        )
        for name, kind, gpus in (("llama-finetune", "train", [0, 1]), ("chat-serve", "serve", [2]))
    ]
    for job in jobs:  # tokens are linked to a job only where it has an attempt
        JobAttempt.objects.create(job=job, number=1, machine=gpu_box, gpus=job.assigned_gpus, started_at=started)
    samples = an_hour_of_samples(gpus=4)
    add_tokens(samples, jobs[0].pk, jobs[1].pk)
    send(gpu_box, samples, gpus=4)
    cpu_box = Machine.objects.create(name="cpu-02")
    stale = time.time() - 900
    send(cpu_box, [make_sample(1, stale, gpus=0)], gpus=0, now=datetime.fromtimestamp(stale, ZoneInfo("UTC")))
    Machine.objects.create(name="gpu-03")  # enrolled, agent not started yet
    rollup.catch_up()
    return {job.name: job.pk for job in jobs}  # the ORM is out of reach once Playwright runs


def test_a_user_logs_in_and_sees_the_fleet_and_a_machines_charts(fleet, live_server, page):
    log_in(page, live_server.url)

    page.wait_for_selector(".machine[data-machine='gpu-01'] .sparkline .main-svg")
    for chart in ("chart-fleet-train", "chart-fleet-generated"):
        page.wait_for_function(DRAWN, arg=chart)
    assert page.evaluate("document.getElementById('chart-fleet-train').data.map(t => t.name)") == ["gpu-01"]
    cards = page.locator(".machine")
    assert cards.count() == 3
    gpu_card = page.locator(".machine[data-machine='gpu-01']")
    assert "4 × H100 80GB HBM3" in gpu_card.inner_text()
    assert gpu_card.locator(".dot.online").count() == 1
    assert page.locator(".machine[data-machine='cpu-02'] .dot.offline").count() == 1
    assert "last seen 15 min ago" in page.locator(".machine[data-machine='cpu-02']").inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "fleet.png"), full_page=True)

    # The throughput summary is asked for once per refresh, even when its panel arrives while the
    # other charts are still drawing. A refresh asks for the machine's jobs (its charts' marks)
    # once, so there are never more summaries than job lists.
    summaries: list[str] = []
    job_lists: list[str] = []
    page.on("request", lambda r: "/machines/gpu-01/throughput" in r.url and summaries.append(r.url))
    page.on("request", lambda r: "machine=gpu-01" in r.url and "limit=200" in r.url and job_lists.append(r.url))
    # The CPU chart's answers, to compare its x axis with what it drew from: a fresh fetch of the
    # last hour can start one 10 s window later than the chart's.
    cpu_answers: list = []
    page.on(
        "response", lambda r: "/series?" in r.url and "metric=system.cpu_percent" in r.url and cpu_answers.append(r)
    )
    page.click(".machine[data-machine='gpu-01'] h2 a")  # the throughput legend names it too
    page.wait_for_url(live_server.url + "/machines/gpu-01/")
    for chart in CHARTS:
        page.wait_for_function(DRAWN, arg=chart)
        assert page.evaluate(f"document.getElementById('{chart}').data[0].x.length") > 0

    # One trace per GPU on the GPU charts (mean lines carry the legend).
    names = page.evaluate(
        "document.getElementById('chart-gpu-util').data.filter(t => t.showlegend !== false).map(t => t.name)"
    )
    assert names == [f"GPU {i}" for i in range(4)]
    # Times are wall-clock strings in the browser's zone, and the axis says which zone.
    layout_title = page.evaluate("document.getElementById('chart-cpu').layout.xaxis.title.text")
    assert layout_title == f"Time ({ZONE})"
    first_x = page.evaluate("document.getElementById('chart-cpu').data[0].x[0]")
    answered = {
        datetime.fromtimestamp(r.json()["series"][0]["t"][0] / 1000, ZoneInfo(ZONE)).strftime("%Y-%m-%d %H:%M:%S")
        for r in cpu_answers
    }
    assert first_x in answered, (first_x, answered)
    # Byte axes in binary units, percentages on a fixed 0-100 scale.
    assert page.evaluate("document.getElementById('chart-gpu-mem').layout.yaxis.title.text") == "Memory used (GiB)"
    assert page.evaluate("document.getElementById('chart-ram').layout.yaxis.title.text") == "RAM used (GiB)"
    assert page.evaluate("document.getElementById('chart-cpu').layout.yaxis.range") == [0, 101]
    assert "alice" in page.locator("#machine-processes").inner_text()
    # Throughput: stacked by job, in tokens/s, with a summary per kind.
    tokens = page.evaluate("document.getElementById('chart-tokens-generated').data.map(t => [t.name, t.stackgroup])")
    assert tokens == [[f"#{fleet['chat-serve']} chat-serve", "tokens"]]
    assert (
        page.evaluate("document.getElementById('chart-tokens-train').layout.yaxis.title.text")
        == "Throughput (tokens/s)"
    )
    assert "tokens/J" in page.inner_text("#machine-throughput [data-kind='train'] .throughput-summary")
    assert page.locator("#machine-throughput .throughput-empty").is_hidden()
    page.wait_for_timeout(500)  # let the last relayout settle before the picture
    page.screenshot(path=str(SCREENSHOTS / "machine.png"), full_page=True)
    assert 1 <= len(summaries) <= len(job_lists), (summaries, job_lists)

    page.click("button[data-range='24h']")
    assert "range=24h" in page.url
    page.wait_for_function("document.getElementById('chart-cpu').layout.uirevision === '24h'")
    page.wait_for_function("document.getElementById('chart-tokens-train').layout.uirevision === '24h'")
    # The CSV link follows the range the page shows.
    assert page.get_attribute("#range-csv", "href").endswith("/machines/gpu-01/series.csv?range=24h")

    # A job's throughput with its GPUs' utilisation on a second axis.
    job = fleet["llama-finetune"]
    page.goto(f"{live_server.url}/jobs/{job}/")
    page.wait_for_function(DRAWN, arg="chart-job-throughput")
    traces = page.evaluate("document.getElementById('chart-job-throughput').data.map(t => [t.name, t.yaxis || 'y'])")
    assert traces == [["Training tokens", "y"], ["GPU utilisation (mean of 2)", "y2"]]
    assert page.evaluate("document.getElementById('chart-job-throughput').layout.yaxis2.side") == "right"
    assert "tokens/J" in page.inner_text("#job-throughput tr[data-kind='train']")
    page.wait_for_timeout(500)
    page.screenshot(path=str(SCREENSHOTS / "job-throughput.png"), full_page=True)

    page.goto(f"{live_server.url}/jobs/")
    assert "tokens/s" in page.inner_text(f"#jobs tr:has(a[href='/jobs/{job}/'])")

    # The fleet toolbar: choosing a state applies it at once, and the URL keeps it for the refresh.
    page.goto(live_server.url + "/")
    page.select_option("#fleet-filters select[name='state']", "offline")
    page.wait_for_url("**state=offline**")
    assert [
        page.locator(".machine").nth(i).get_attribute("data-machine") for i in range(page.locator(".machine").count())
    ] == ["cpu-02"]
    assert page.errors == []


def tick_labels(page, chart: str) -> list[str]:
    return page.evaluate(f"[...document.querySelectorAll('#{chart} .xtick text')].map(t => t.textContent)")


@pytest.mark.parametrize("span", ["1h", "24h", "7d"])
def test_time_axes_label_every_tick_apart(fleet, live_server, page, span):
    """Every tick of a time axis reads differently: daily ticks once all read "00:00" (Plotly takes
    the first tick-format stop whose range holds the spacing, both ends included)."""
    log_in(page, live_server.url)
    page.goto(f"{live_server.url}/?range={span}")
    page.wait_for_function(f"document.getElementById('chart-fleet-util').layout?.uirevision === '{span}'")
    page.wait_for_function("document.querySelectorAll('#chart-fleet-money .xtick text').length >= 2")
    for chart in ("chart-fleet-util", "chart-fleet-money"):
        labels = tick_labels(page, chart)
        assert len(labels) >= 2 and len(set(labels)) == len(labels), (chart, labels)
    # The money chart's days read as dates; without cost profiles its RoI axis is not drawn.
    assert all(len(label) == 10 and label[4] == "-" for label in tick_labels(page, "chart-fleet-money"))
    assert page.locator("#chart-fleet-money .y2tick").count() == 0
    assert page.errors == []


def test_the_fleet_history_says_while_it_loads_and_when_it_failed(fleet, live_server, page):
    """A day of a large fleet takes seconds: the card says it is loading a new range, and says so
    when the answer failed instead of leaving the last range's charts as if they were this one's."""
    log_in(page, live_server.url)
    held = []

    def hold(route):  # answered below, when the test says
        held.append(route)

    page.route("**/api/v1/fleet/history*", hold)
    page.goto(f"{live_server.url}/?range=24h")
    status = page.locator("#fleet-history-status")
    page.wait_for_function("document.getElementById('fleet-history').getAttribute('aria-busy') === 'true'")
    assert status.inner_text() == "Loading 24h…"
    while not held:  # Playwright hands the request over while it processes events
        page.wait_for_timeout(50)
    held[0].fulfill(status=500, body="boom")
    page.wait_for_function("document.getElementById('fleet-history-status').textContent.startsWith('Could not')")
    assert "(HTTP 500)" in status.inner_text() and "next refresh tries again" in status.inner_text()
    assert page.get_attribute("#fleet-history", "aria-busy") is None

    page.unroute("**/api/v1/fleet/history*")
    page.click("#range-picker [data-range='1h']")
    page.wait_for_function("document.getElementById('chart-fleet-util').layout?.uirevision === '1h'")
    assert status.inner_text() == "" and not status.is_visible()
    # Chromium logs the 500 as a failed resource; nothing else went wrong.
    assert [e for e in page.errors if "500" not in e] == []
