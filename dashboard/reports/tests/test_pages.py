"""The report pages: who may read them, what they show, and how they refuse bad parameters."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

from dashboard.accounts.models import ApiToken

from . import seed

DAY1 = seed.recent_day1()
DAY2 = DAY1 + timedelta(days=1)


@pytest.fixture(autouse=True)
def _utc(settings):
    settings.TIME_ZONE = "UTC"


@pytest.mark.django_db
def test_a_stranger_is_sent_to_the_login_page(client):
    seed.two_days(DAY1)
    for url in ("/reports/", "/reports/machines/gpu-01/", "/reports/machines/gpu-01.csv", "/reports/fleet.csv"):
        r = client.get(url)
        assert r.status_code == 302 and r["Location"].startswith("/login/?next="), url


@pytest.mark.django_db
def test_a_script_may_fetch_the_csv_with_a_personal_token(client, viewer):
    seed.two_days(DAY1)
    token = ApiToken.issue(viewer)
    r = client.get("/reports/machines/gpu-01.csv", {"from": "2d"}, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert r.status_code == 200 and r.content.startswith(b"period,from,to,")
    r = client.get("/reports/machines/gpu-01.csv", {"from": "2d"}, HTTP_AUTHORIZATION="Bearer hwu_nope_nope")
    assert r.status_code == 401


@pytest.mark.django_db
def test_a_viewer_reads_a_machines_day_beside_the_day_before(client, viewer):
    seed.two_days(DAY1)
    client.force_login(viewer)
    r = client.get("/reports/machines/gpu-01/", {"period": "day", "date": DAY2.date().isoformat(), "tz": "UTC"})
    assert r.status_code == 200
    html = r.content.decode()
    assert DAY2.strftime("%A %-d %B %Y") in html
    assert 'data-figure="mean_util_percent">46.0<' in html and 'data-figure="p95_util_percent">87.4<' in html
    assert 'data-figure="busy_hours">21.00<' in html and 'data-figure="energy_kwh">7.92<' in html
    assert "124.54 USD" in html and "121.15 USD" in html  # cost this day and the day before
    assert "finetune" in html and "status-failed" in html
    assert "agent windows" in html  # where the utilisation figures come from
    # The CSV link spells out the period, so it downloads exactly these figures.
    assert f'href="/reports/machines/gpu-01.csv?from={DAY2.date()}T00%3A00%3A00%2B00%3A00' in html
    assert "previous_from=" in html
    assert 'id="report-chart-data"' in html


@pytest.mark.django_db
def test_times_are_shown_in_the_zone_the_page_was_asked_for(client, viewer):
    seed.two_days(DAY1)
    client.force_login(viewer)
    r = client.get(
        "/reports/machines/gpu-01/",
        {"from": DAY2.isoformat(), "to": (DAY2 + timedelta(days=1)).isoformat(), "tz": "Australia/Adelaide"},
    )
    html = r.content.decode()
    local = DAY2.astimezone(ZoneInfo("Australia/Adelaide"))  # midnight UTC is 09:30 or 10:30 there
    assert local.strftime("%Y-%m-%d %H:%M") in html and local.minute == 30
    assert "Australia/Adelaide" in html


@pytest.mark.django_db
def test_bad_parameters_get_a_400_page_that_says_why(client, viewer):
    seed.two_days(DAY1)
    client.force_login(viewer)
    r = client.get("/reports/machines/gpu-01/", {"period": "fortnight"})
    assert r.status_code == 400
    assert "period: expected one of day, week, month, custom" in r.content.decode()
    assert client.get("/reports/", {"from": "later"}).status_code == 400
    assert client.get("/reports/machines/nope/").status_code == 404
    assert client.get("/reports/machines/nope.csv").status_code == 404


@pytest.mark.django_db
def test_the_fleet_report_ranks_machines_and_links_to_their_reports(client, viewer):
    seed.fleet(DAY1)
    client.force_login(viewer)
    r = client.get("/reports/", {"period": "day", "date": DAY1.date().isoformat(), "tz": "UTC"})
    assert r.status_code == 200
    html = r.content.decode()
    idle = html[html.index('id="rank-idle-cost"') : html.index('id="rank-roi"')]
    assert idle.index("gpu-01") < idle.index("gpu-02") < idle.index("gpu-03")
    assert "121.15 USD" in idle
    assert f'href="/reports/machines/gpu-01/?period=day&amp;date={DAY1.date()}&amp;tz=UTC"' in html
    assert 'href="/reports/fleet.csv?from=' in html


@pytest.mark.django_db
def test_the_nav_and_the_machine_page_link_to_reports(client, viewer):
    seed.two_days(DAY1)
    client.force_login(viewer)
    html = client.get("/machines/gpu-01/").content.decode()
    assert 'href="/reports/"' in html and 'href="/reports/machines/gpu-01/"' in html


@pytest.mark.django_db
def test_samples_of_a_gpu_the_inventory_lacks_show_as_a_row_of_their_own(client, machine, viewer):
    # One window with GPU 0 and no inventory: the period before has no row for that GPU at all.
    from conftest import make_batch
    from dashboard.fleet.ingest import store_batch
    from dashboard.fleet.payload import Batch

    store_batch(machine, Batch.model_validate(make_batch([1], inventory=False, gpus=1)))
    client.force_login(viewer)
    page = client.get("/reports/machines/gpu-01/")
    assert page.status_code == 200
    assert b'data-device="0"' in page.content and b"GPU 0" in page.content
    csv = client.get("/reports/machines/gpu-01.csv")
    assert csv.status_code == 200 and "GPU 0" in csv.content.decode()
