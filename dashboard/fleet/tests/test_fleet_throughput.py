"""The fleet's tokens/s chart: the busiest machines on their own, the rest summed, nothing lost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conftest import make_batch
from dashboard.fleet import throughput
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import Batch

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
HOUR = (T0, T0 + timedelta(hours=1))


@pytest.fixture
def twelve_machines(db):
    """m00 ... m11; machine i counts 100 x (i + 1) generated tokens in the window ending T0+10 s,
    m05 also 70 in the next one."""
    for i in range(12):
        machine = Machine.objects.create(name=f"m{i:02d}")
        batch = make_batch([1, 2], ts=(T0 + timedelta(seconds=20)).timestamp(), gpus=0)
        batch["samples"][0]["tokens"] = [{"job_id": None, "source": "report", "generated": 100 * (i + 1)}]
        if i == 5:
            batch["samples"][1]["tokens"] = [{"job_id": None, "source": "report", "generated": 70}]
        store_batch(machine, Batch.model_validate(batch))


@pytest.mark.django_db
def test_the_top_machines_get_a_series_each_and_the_rest_one_together(twelve_machines):
    data = throughput.fleet_series("tokens.generated", *HOUR, top=10)
    # The fleet's chart reads minute rollups even for an hour: both windows are in the 10:00 minute.
    assert data["step_s"] == 60 and (data["machines"], data["top"]) == (12, 10)
    names = [s["name"] for s in data["series"]]
    # m00 (100 tokens) and m01 (200) counted least; m05's 670 keeps it in.
    assert names == [f"m{i:02d}" for i in range(2, 12)] + ["2 other machines"]
    assert data["series"][-1]["machine"] is None and data["series"][-1]["mean"] == [5.0]  # 300 / 60 s
    m05 = data["series"][3]
    assert m05["machine"] == "m05" and m05["t"] == [int(T0.timestamp() + 30) * 1000]
    assert m05["mean"] == [round(670 / 60, 3)]
    # Stacked, the series add up to the fleet: 7,800 + 70 tokens.
    assert sum(sum(s["mean"]) for s in data["series"]) * data["step_s"] == pytest.approx(7870, rel=1e-4)


@pytest.mark.django_db
def test_a_fleet_within_the_top_has_no_others_series(twelve_machines):
    data = throughput.fleet_series("tokens.generated", *HOUR, top=12)
    assert len(data["series"]) == 12 and all(s["machine"] for s in data["series"])
    one = throughput.fleet_series("tokens.generated", *HOUR, top=11)
    assert one["series"][-1]["name"] == "1 other machine"


@pytest.mark.django_db
def test_a_range_without_tokens_draws_no_series(twelve_machines):
    data = throughput.fleet_series("tokens.train", *HOUR)  # only generated tokens were counted
    assert (data["series"], data["machines"]) == ([], 0)
    later = throughput.fleet_series("tokens.generated", T0 + timedelta(hours=2), T0 + timedelta(hours=3))
    assert (later["series"], later["machines"]) == ([], 0)


@pytest.mark.django_db
def test_the_api_takes_top_and_refuses_a_bad_one(client, twelve_machines, viewer):
    client.force_login(viewer)
    r = client.get("/api/v1/fleet/series", {"metric": "tokens.generated", "since": T0.isoformat(), "top": 3})
    assert r.status_code == 200 and [s["machine"] for s in r.json()["series"]] == ["m09", "m10", "m11", None]
    bad = client.get("/api/v1/fleet/series", {"top": 0})
    assert bad.status_code == 400 and bad.json()["error"].startswith("top: "), bad.content
