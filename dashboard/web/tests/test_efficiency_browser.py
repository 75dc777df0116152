"""GPM efficiency in a real browser: the charts beside NVML's utilisation on the machine and job
pages, the note where a GPU has no GPM, a job's MFU, and the fleet's "busy but inefficient" order.

The telemetry is the agent's own: NvidiaCollector over the H200 GPM recordings in
hwprobe/tests/fixtures/gpm/, recorded on a real H200 (a bf16 8192² matmul: NVML 100 %, SM 96.0 %,
tensor 93.1 %, DRAM 17.6 %, occupancy 14.2 %; 1 GiB copies: NVML 99 %, SM 98.1 %, tensor 0 %; a
64×64 matmul loop: NVML 30 %, SM 0.5 %) and an L40S without GPM, folded into windows and ingested
like a batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from conftest import BROWSER_ZONE as ZONE
from conftest import log_in
from dashboard.economics.catalogue import shipped_rows
from dashboard.economics.models import HardwareSpec
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import Batch
from dashboard.fleet.rollup import catch_up
from dashboard.jobs.models import Job, JobAttempt
from hwprobe.collectors.nvidia import NvidiaCollector
from hwprobe.testing import batches, nvml_replay

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

GPM = Path(__file__).resolve().parents[3] / "hwprobe" / "tests" / "fixtures" / "gpm"
MINUTES = 20  # of 10 s windows per machine, ending a minute ago
TRAIN_TOKENS = 100_000  # per 10 s window of the training job: 10,000 tokens/s

# The GPM chart's series, NVML's first, with the bf16 matmul recording's readings (%).
TENSOR_LOAD = {
    "NVML utilisation": 100.0,
    "SM activity": 95.957,
    "Tensor activity": 93.108,
    "DRAM bandwidth": 17.597,
    "SM occupancy": 14.181,
}
DRAWN = (
    "id => { const el = document.getElementById(id);"
    " return el && el.data && el.data.length && el.data[0].x.length > 0; }"
)
# Each legend trace of a chart (not a min-max band): its name and the values it draws, gaps left out.
TRACES = (
    "id => document.getElementById(id).data.filter(t => t.showlegend !== false)"
    ".map(t => [t.name, t.y.filter(v => v !== null)])"
)
# Records the charts drawn from now on.
COUNT_DRAWS = """() => {
  window.drawn = [];
  const react = Plotly.react;
  Plotly.react = (el, ...rest) => { window.drawn.push(el.id); return react(el, ...rest); };
}"""


def replay(
    machine: Machine, recording: str, end: datetime, tokens: Callable[[float], list[dict]] | None = None
) -> None:
    """``machine``'s agent sends MINUTES of windows of a recorded load ending at ``end``;
    ``tokens(window_end_ts)`` adds the token counts the agent would have read in that window."""
    nvml = nvml_replay.from_recording(json.loads((GPM / recording).read_text()))
    collector = NvidiaCollector(nvml=nvml, pid_info=lambda pid: (None, None))
    collector.collect()  # the first GPM sample has nothing to pair with yet
    batch = batches.batch(collector, list(range(1, 6 * MINUTES + 1)), end.timestamp())
    if tokens is not None:
        for sample in batch["samples"]:
            sample["tokens"] = tokens(sample["ts"])
    store_batch(machine, Batch.model_validate(batch), now=end)


def ran(owner: Any, machine: Machine, name: str, kind: str, started: datetime, finished: datetime, **model) -> Job:
    job = Job.objects.create(
        owner=owner,
        name=name,
        kind=kind,
        argv=["x"],
        gpus=1,
        machine=machine,
        assigned_gpus=[0],
        status="succeeded",
        attempt=1,
        started_at=started,
        finished_at=finished,
        **model,
    )
    # Tokens count for a job only where one of its attempts ran.
    JobAttempt.objects.create(job=job, number=1, machine=machine, gpus=[0], started_at=started, ended_at=finished)
    return job


@pytest.fixture
def fleet(transactional_db, django_user_model):
    """Four single-GPU machines and two finished jobs; the ORM is out of reach once Playwright runs."""
    # An earlier transactional test flushes every table, the catalogue its migration loaded included.
    for row in shipped_rows():
        HardwareSpec.objects.update_or_create(name=row["name"], shipped=True, defaults=row)
    victor = django_user_model.objects.create_user("victor", password="victor-pass")
    # On a whole minute: a chart's point stands at the middle of its step (10 s to 60 s), so with the
    # run's ends on a step boundary its points fall inside the run whatever second the test starts.
    now = timezone.now().replace(second=0, microsecond=0)
    end = now - timedelta(minutes=1)
    started, finished = now - timedelta(minutes=15), now - timedelta(minutes=5)
    matmul, l40s = Machine.objects.create(name="h200-matmul"), Machine.objects.create(name="l40s-01")
    train = ran(victor, matmul, "llama-8b-pretrain", "train", started, finished, model_params_b=8.0, precision="bf16")
    evaluation = ran(victor, l40s, "eval", "train", started, finished)

    def training_tokens(ts: float) -> list[dict]:
        if started.timestamp() < ts <= finished.timestamp():
            return [{"job_id": train.pk, "source": "progress", "train": TRAIN_TOKENS}]
        return []

    replay(matmul, "h200_matmul_bf16.json", end, training_tokens)
    replay(Machine.objects.create(name="h200-copy"), "h200_copy_1gib.json", end)
    replay(Machine.objects.create(name="h200-tiny"), "h200_tiny_matmul.json", end)
    replay(l40s, "l40s_no_gpm.json", end)
    catch_up(now)
    local = ZoneInfo(ZONE)
    return {
        "train": train.pk,
        "eval": evaluation.pk,
        "run": [t.astimezone(local).strftime("%Y-%m-%d %H:%M:%S") for t in (started, finished)],
    }


def drawn_values(page: Any, chart: str) -> dict[str, list[float]]:
    page.wait_for_function(DRAWN, arg=chart)
    return dict(page.evaluate(TRACES, chart))


def test_a_tensor_load_draws_sm_tensor_and_dram_beside_nvml_utilisation(fleet, live_server, page):
    log_in(page, live_server.url, then="/machines/h200-matmul/")

    card = page.locator("#gpm-efficiency")
    assert "GPU 0 · NVIDIA H200" in card.inner_text()
    assert card.locator(".gpm-absent").count() == 0
    traces = drawn_values(page, "gpm-chart-0")
    assert list(traces) == list(TENSOR_LOAD)
    for name, value in TENSOR_LOAD.items():
        assert traces[name] and all(v == pytest.approx(value, abs=0.05) for v in traces[name]), name
    # Every series is a percentage on one fixed 0-100 axis, over time in the browser's zone.
    layout = page.evaluate("document.getElementById('gpm-chart-0').layout")
    assert layout["yaxis"]["title"]["text"] == "Activity (%)"
    assert layout["yaxis"]["range"] == [0, 101]
    assert layout["xaxis"]["title"]["text"] == f"Time ({ZONE})"
    hovers = page.evaluate("document.getElementById('gpm-chart-0').data.map(t => t.hovertemplate)")
    assert all(h.startswith("%{y:.1f} %") for h in hovers)
    # NVML's own chart says the same 100 % that the GPM chart reads the others against.
    nvml = drawn_values(page, "chart-gpu-util")
    assert list(nvml) == ["GPU 0 · H200"]
    assert all(v == pytest.approx(100) for v in nvml["GPU 0 · H200"])

    # Another range redraws it at once with the page's other charts, not at its next refresh.
    page.click("button[data-range='24h']")
    page.wait_for_function("document.getElementById('chart-cpu').layout.uirevision === '24h'")
    page.wait_for_function(
        "JSON.parse(document.getElementById('gpm-chart-0').layout.uirevision).since === '24h'", timeout=3000
    )
    # The panels load on their own (static/js/base.js) and under load can arrive after the click,
    # drawing the throughput card then: wait until they are in and it shows the new range, so that
    # what is counted below can only be a refresh.
    page.wait_for_function(
        "document.querySelectorAll('[data-panel-url]').length === 0 && "
        "(document.getElementById('chart-tokens-train') || {}).layout?.uirevision === '24h'"
    )
    # Auto-refresh off: it stays as drawn past its 10 s refresh, as the page's other charts do.
    page.uncheck("#auto-refresh")
    page.evaluate(COUNT_DRAWS)
    page.wait_for_timeout(11_000)
    assert page.evaluate("window.drawn") == []
    assert page.errors == []


def test_a_gpu_without_gpm_says_why_instead_of_charting_zeros(fleet, live_server, page):
    log_in(page, live_server.url, then="/machines/l40s-01/")

    note = page.locator("#gpm-efficiency .gpm-absent[data-gpus~='0']")
    assert "NVIDIA L40S: no GPM metrics" in note.inner_text()
    assert "has no GPM: NVML's GPU Performance Monitoring needs Hopper or later" in note.inner_text()
    assert page.locator(".chart[data-gpm-gpu]").count() == 0
    # NVML's utilisation is still charted, and GPM's series hold no reading, not a 0.
    assert all(v == pytest.approx(9) for v in drawn_values(page, "chart-gpu-util")["GPU 0 · L40S"])
    for metric in ("gpu.sm_util_percent", "gpu.tensor_util_percent", "gpu.dram_bw_util_percent"):
        values = page.evaluate(
            "m => fetch('/api/v1/machines/l40s-01/series?since=1h&metric=' + m).then(r => r.json())"
            ".then(j => j.series.flatMap(s => s.mean).filter(v => v !== null))",
            metric,
        )
        assert values == [], metric

    # A job that ran on it says the same on its page.
    page.goto(f"{live_server.url}/jobs/{fleet['eval']}/")
    assert "has no GPM" in page.inner_text("#gpm-efficiency .gpm-absent[data-gpus~='0']")
    assert page.locator(".chart[data-gpm-gpu]").count() == 0
    assert page.errors == []


def test_a_job_page_shows_its_gpus_efficiency_over_its_run_and_its_mfu(fleet, live_server, page):
    log_in(page, live_server.url, then=f"/jobs/{fleet['train']}/")

    traces = drawn_values(page, "gpm-chart-0")
    assert list(traces) == list(TENSOR_LOAD)
    for name, value in TENSOR_LOAD.items():
        assert traces[name] and all(v == pytest.approx(value, abs=0.05) for v in traces[name]), name
    # The chart spans the job's run, not the page's range, and draws only windows inside it.
    assert page.evaluate("document.getElementById('gpm-chart-0').layout.xaxis.range") == fleet["run"]
    times = page.evaluate("document.getElementById('gpm-chart-0').data[1].x")
    assert fleet["run"][0] <= min(times) and max(times) <= fleet["run"][1]
    # 6 × 8e9 parameters × 10,000 tokens/s ÷ the H200's 989.5 TFLOP/s dense bf16 = 48.5 %.
    efficiency = page.inner_text("#job-efficiency")
    assert "Model FLOPs utilisation" in efficiency
    assert "48.5 %" in efficiency
    assert "6 × 8.0 B parameters × 10,000 tokens/s ÷ 989.5 TFLOP/s dense bf16 peak of NVIDIA H200" in efficiency
    assert page.errors == []


def test_the_fleet_ranks_the_busiest_gpu_with_the_least_sm_activity_first(fleet, live_server, page):
    log_in(page, live_server.url)

    rows = page.locator("#busy-but-inefficient tbody tr")
    cells = [rows.nth(i).locator("td").all_inner_texts() for i in range(rows.count())]
    # NVML 30 % at 0.5 % SM activity first; copies (99 % NVML, 98 % SM, no tensor work) after;
    # the tensor load is working and the L40S has no GPM to judge it by.
    assert [c[0] for c in cells] == ["h200-tiny", "h200-copy"]
    assert cells[0][1:6] == ["0 · NVIDIA H200", "30.0", "0.5", "0.0", "0.0"]
    assert cells[1][1:6] == ["0 · NVIDIA H200", "99.0", "98.1", "0.0", "87.1"]
    headers = page.locator("#busy-but-inefficient thead th").all_inner_texts()
    assert headers[2:6] == ["NVML util (%)", "SM activity (%)", "Tensor activity (%)", "DRAM bandwidth (%)"]

    # Its link leads to the machine page, where the gap is drawn.
    page.click("#busy-but-inefficient tbody tr:first-child a")
    page.wait_for_url(live_server.url + "/machines/h200-tiny/")
    traces = drawn_values(page, "gpm-chart-0")
    assert all(v == pytest.approx(30) for v in traces["NVML utilisation"])
    assert all(v == pytest.approx(0.493) for v in traces["SM activity"])
    assert page.errors == []
