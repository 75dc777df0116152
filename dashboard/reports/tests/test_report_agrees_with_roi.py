"""A machine report and RoI over the same period agree to the cent and the token, windows stamped
on the period's edges included: both read periods through dashboard.core.periods."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dashboard.fleet.models import ThroughputSample
from dashboard.reports.tests.test_csv import read

from . import seed

DAY1 = seed.recent_day1()
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY2 + timedelta(days=1)


@pytest.fixture(autouse=True)
def _utc(settings):
    settings.TIME_ZONE = "UTC"


def _window(machine, seq: int, ts, generated: int) -> None:
    ThroughputSample.objects.create(
        machine=machine, seq=seq, job_key=0, source="report", ts=ts, interval_s=10, generated_tokens=generated
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("start", "end"),
    [
        (DAY2, DAY3),  # a calendar day
        (DAY2 + timedelta(hours=10, minutes=30), DAY2 + timedelta(hours=15, minutes=30)),  # off the hours
    ],
    ids=["day", "custom"],
)
def test_a_machine_report_and_roi_over_one_period_agree_to_the_cent_and_the_token(client, viewer, start, end):
    m = seed.two_days(DAY1)
    # Windows stamped exactly on the period's edges: the one at the start counts, the one at the
    # end belongs to the next period. Odd counts, so a window counted twice or dropped shows.
    _window(m, 1001, start, 7)
    _window(m, 1002, end, 11)
    _window(m, 1003, end - timedelta(microseconds=1), 13)
    client.force_login(viewer)
    query = {"from": start.isoformat(), "to": end.isoformat(), "tz": "UTC"}
    rows = read(client.get(f"/reports/machines/{m.name}.csv", query))
    [row] = [r for r in rows if r["scope"] == "machine" and r["period"] == "current"]
    answer = client.get(f"/api/v1/machines/{m.name}/roi", {"since": start.isoformat(), "until": end.isoformat()})
    assert answer.status_code == 200, answer.content
    totals = answer.json()["totals"]

    assert int(row["generated_tokens"]) == totals["generated_tokens"]
    assert int(row["train_tokens"]) == totals["train_tokens"]
    assert int(row["prompt_tokens"]) == totals["prompt_tokens"]
    stored = sum(
        ThroughputSample.objects.filter(
            machine=m, ts__gte=start, ts__lt=end, source__in=("prometheus", "report")
        ).values_list("generated_tokens", flat=True)
    )
    assert totals["generated_tokens"] == stored  # 7 and 13 in, 11 out
    for column, key in (("cost_usd", "cost"), ("value_usd", "value"), ("energy_cost_usd", "energy_cost")):
        assert round(float(row[column]), 2) == round(totals[key], 2), column
