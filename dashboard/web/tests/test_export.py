"""The machine page's data as CSV: the charts' own points, in the browser's zone, every metric."""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime

import pytest

from conftest import make_batch
from dashboard.accounts.models import ApiToken
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import Batch
from dashboard.web.export import HEADER
from dashboard.web.middleware import ZONE_COOKIE

pytestmark = pytest.mark.django_db


@pytest.fixture
def box():
    """gpu-01: 2 GPUs, 30 windows of 10 s ending now, a job-less 1,000 generated tokens in each."""
    machine = Machine.objects.create(name="gpu-01")
    batch = make_batch(range(1, 31), time.time(), gpus=2)
    for sample in batch["samples"]:
        sample["tokens"] = [{"job_id": None, "source": "report", "generated": 1000}]
    store_batch(machine, Batch.model_validate(batch))
    return machine


def rows(response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_the_csv_holds_the_points_the_charts_draw(client, viewer, box):
    client.force_login(viewer)
    client.cookies[ZONE_COOKIE] = "Australia/Adelaide"  # what static/js/base.js sets
    wanted = "system.cpu_percent,gpu.util_percent"
    response = client.get("/machines/gpu-01/series.csv", {"range": "1h", "metrics": wanted})
    assert response["Content-Disposition"].startswith('attachment; filename="gpu-01-')
    got = rows(response)
    assert list(got[0]) == HEADER
    for metric in wanted.split(","):
        chart = client.get("/api/v1/machines/gpu-01/series", {"metric": metric, "since": "1h"}).json()
        mine = [r for r in got if r["metric"] == metric]
        assert len(mine) == sum(len(s["t"]) for s in chart["series"]) > 0
        for s in chart["series"]:
            points = [r for r in mine if r["series"] == s["name"]]
            assert [float(r["mean"]) for r in points] == s["mean"]
            assert [float(r["max"]) for r in points] == s["max"]
            assert {r["unit"] for r in points} == {chart["unit"]}
            start = datetime.fromisoformat(points[0]["step_start"])
            end = datetime.fromisoformat(points[0]["step_end"])
            # The chart's point stands mid-step; the CSV gives the step, in the browser's zone.
            assert (start.timestamp() + end.timestamp()) / 2 * 1000 == s["t"][0]
            assert start.utcoffset().total_seconds() in (9.5 * 3600, 10.5 * 3600)
    assert {r["device"] for r in got if r["metric"] == "gpu.util_percent"} == {"0", "1"}


def test_without_a_list_every_metric_of_the_page_is_there_tokens_included(client, viewer, box):
    client.force_login(viewer)
    got = rows(client.get("/machines/gpu-01/series.csv"))
    metrics = {r["metric"] for r in got}
    assert {"system.cpu_percent", "gpu.power_watts", "gpu.mem_used_bytes", "tokens.generated"} <= metrics
    generated = [r for r in got if r["metric"] == "tokens.generated"]
    assert {r["series"] for r in generated} == {"outside jobs"} and {r["unit"] for r in generated} == {"tokens/s"}
    assert all(r["min"] == "" and r["max"] == "" for r in generated)  # a rate has one value per step


def test_an_unknown_metric_is_a_400_that_names_it(client, viewer, box):
    client.force_login(viewer)
    response = client.get("/machines/gpu-01/series.csv", {"metrics": "system.cpu_percent,gpu.nope"})
    assert response.status_code == 400
    assert "metrics: unknown 'gpu.nope'" in response.content.decode()


def test_the_machine_page_links_its_csv_for_its_range(client, viewer, box):
    client.force_login(viewer)
    page = client.get("/machines/gpu-01/", {"range": "24h"}).content.decode()
    assert 'id="range-csv" href="/machines/gpu-01/series.csv?range=24h"' in page


def test_anonymous_users_are_sent_to_log_in(client, box):
    response = client.get("/machines/gpu-01/series.csv")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_a_script_may_fetch_it_with_a_personal_token(client, viewer, box):
    token = ApiToken.issue(viewer)
    got = rows(
        client.get("/machines/gpu-01/series.csv?metrics=system.cpu_percent", HTTP_AUTHORIZATION=f"Bearer {token}")
    )
    assert got and {r["metric"] for r in got} == {"system.cpu_percent"}
    refused = client.get("/machines/gpu-01/series.csv", HTTP_AUTHORIZATION="Bearer hwu_nope_nope")
    assert refused.status_code == 401
