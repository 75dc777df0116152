"""The CSV downloads: columns with their units, the seeded figures, and refusals that explain."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest

from dashboard.reports import report

from . import seed

# Views use the real clock: the seeded days are the day before yesterday and yesterday.
DAY1 = seed.recent_day1()
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY2 + timedelta(days=1)
QUERY = {"from": DAY2.isoformat(), "to": DAY3.isoformat(), "tz": "UTC"}


@pytest.fixture(autouse=True)
def _utc(settings):
    settings.TIME_ZONE = "UTC"


def read(response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_every_figure_column_names_its_unit():
    columns = report.machine_csv_columns("EUR")
    figures = [c for c in columns if c not in ("period", "from", "to", "scope", "device", "name", "source")]
    units = ("_percent", "_hours", "_watts", "_kwh", "_tokens", "_eur")
    counts = ("jobs", "attempts")
    for column in figures:
        assert column.endswith(units) or column.startswith(counts), column
    assert {
        "mean_util_percent",
        "p95_util_percent",
        "busy_hours",
        "idle_hours",
        "energy_kwh",
        "prompt_tokens",
        "cost_eur",
        "idle_cost_eur",
        "value_eur",
        "roi_percent",
    } <= set(columns)


@pytest.mark.django_db
def test_the_machine_csv_has_a_row_per_gpu_the_cpu_and_the_machine_for_both_periods(client, viewer):
    seed.two_days(DAY1)
    client.force_login(viewer)
    response = client.get("/reports/machines/gpu-01.csv", QUERY)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == f'attachment; filename="gpu-01-report-{DAY2.date()}.csv"'
    rows = read(response)
    assert [(r["period"], r["scope"], r["device"]) for r in rows] == [
        ("current", "gpu", "0"),
        ("current", "gpu", "1"),
        ("current", "cpu", ""),
        ("current", "machine", ""),
        ("previous", "gpu", "0"),
        ("previous", "gpu", "1"),
        ("previous", "cpu", ""),
        ("previous", "machine", ""),
    ]
    gpu0, _, cpu, machine, before_gpu0, *_ = rows
    assert gpu0["from"] == DAY2.isoformat() and gpu0["to"] == DAY3.isoformat()
    assert gpu0["name"] == "GPU 0 · H100 80GB HBM3" and gpu0["source"] == "raw"
    assert (gpu0["mean_util_percent"], gpu0["p95_util_percent"], gpu0["busy_hours"], gpu0["idle_hours"]) == (
        "46.0",
        "87.4",
        "21.0",
        "3.0",
    )
    assert (gpu0["mean_power_watts"], gpu0["p95_power_watts"], gpu0["energy_kwh"]) == ("330.0", "537.0", "7.92")
    assert (cpu["mean_util_percent"], cpu["p95_util_percent"], cpu["energy_kwh"]) == ("16.25", "50.0", "")
    assert machine["energy_kwh"] == "15.12"
    assert (machine["prompt_tokens"], machine["generated_tokens"], machine["train_tokens"]) == (
        "1200000",
        "2400000",
        "1200000",
    )
    assert (machine["jobs"], machine["attempts_succeeded"], machine["attempts_failed"]) == ("2", "1", "1")
    assert (machine["cost_usd"], machine["idle_cost_usd"], machine["value_usd"], machine["roi_percent"]) == (
        "124.536",
        "0.0",
        "36.0",
        "-71.0927",
    )
    assert before_gpu0["period"] == "previous" and before_gpu0["idle_hours"] == "24.0"
    assert rows[-1]["idle_cost_usd"] == "121.152"


@pytest.mark.django_db
def test_from_and_to_accept_durations_like_the_series_api(client, viewer):
    seed.two_days(DAY1)
    client.force_login(viewer)
    rows = read(client.get("/reports/machines/gpu-01.csv", {"from": "24h"}))
    assert rows[0]["period_hours"] == "24.0" and rows[0]["source"] == "raw"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"from": "soon"}, "from: expected an ISO date"),
        ({"to": "2026-11-12"}, "from: required"),
        ({"from": "2026-11-12", "to": "2026-11-11"}, "to: must be after from"),
        ({**QUERY, "idle_below_percent": "lots"}, "idle_below_percent: expected a number from 0 to 100"),
        ({**QUERY, "tz": "Nowhere/Else"}, "tz: unknown time zone"),
    ],
)
def test_bad_parameters_get_400_with_a_sentence(client, viewer, query, message):
    seed.two_days(DAY1)
    client.force_login(viewer)
    response = client.get("/reports/machines/gpu-01.csv", query)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/plain")
    assert response.content.decode().startswith(message)


@pytest.mark.django_db
def test_the_fleet_csv_lists_both_ranks_with_the_currency_in_its_headers(client, viewer):
    seed.fleet(DAY1)
    client.force_login(viewer)
    response = client.get(
        "/reports/fleet.csv", {"from": DAY1.date().isoformat(), "to": DAY2.date().isoformat(), "tz": "UTC"}
    )
    assert response.status_code == 200
    rows = read(response)
    assert list(rows[0]) == [
        "machine",
        "rank_idle_cost",
        "rank_roi",
        "gpus",
        "mean_gpu_util_percent",
        "monitored_hours",
        "idle_hours",
        "energy_kwh",
        "currency",
        "cost_usd",
        "idle_cost_usd",
        "value_usd",
        "roi_percent",
    ]
    assert [(r["machine"], r["rank_idle_cost"], r["idle_cost_usd"]) for r in rows] == [
        ("gpu-01", "1", "121.152"),
        ("gpu-02", "2", "0.0"),
        ("gpu-03", "", ""),
    ]
