"""The report pages in a real browser (Debian's chromium through Playwright): figures, zone, charts,
the CSV link and the print layout."""

from __future__ import annotations

import csv
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

from conftest import BROWSER_ZONE as ZONE
from conftest import SCREENSHOTS, log_in

from . import seed

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

A4_WIDTH_PX = 186 / 25.4 * 96  # 210 mm less 2 × 12 mm margins, in CSS pixels (about 703)
DAY1 = seed.recent_day1()
DAY2, DAY3 = DAY1 + timedelta(days=1), DAY1 + timedelta(days=2)


@pytest.fixture
def fleet(transactional_db, django_user_model, settings):
    settings.TIME_ZONE = "UTC"
    django_user_model.objects.create_user("victor", password="victor-pass")
    seed.fleet(DAY1)


def figure(page, device: str, name: str) -> str:
    return page.inner_text(f"#report-devices tr[data-device='{device}'] [data-figure='{name}']")


def test_a_machine_report_shows_the_figures_prints_on_a4_and_downloads_its_csv(fleet, live_server, page):
    log_in(page, live_server.url)
    page.click("nav >> text=Reports")
    page.wait_for_url("**/reports/?tz=Australia%2FAdelaide")  # the page asks again in the reader's zone
    assert page.locator("#rank-idle-cost tbody tr").count() == 3

    query = f"from={DAY2.isoformat()}&to={DAY3.isoformat()}".replace("+", "%2B")
    page.goto(f"{live_server.url}/reports/machines/gpu-01/?{query}")
    page.wait_for_url("**tz=Australia%2FAdelaide**")
    assert figure(page, "0", "mean_util_percent") == "46.0"
    assert figure(page, "0", "p95_util_percent") == "87.4"
    assert figure(page, "0", "busy_hours") == "21.00"
    assert figure(page, "1", "energy_kwh") == "7.20"
    assert figure(page, "cpu", "p95_util_percent") == "50.0"
    local = DAY2.astimezone(ZoneInfo(ZONE))
    assert local.strftime("%Y-%m-%d %H:%M") in page.inner_text("#report-range")
    assert "124.54 USD" in page.inner_text("#report-summary")

    page.wait_for_function(
        "() => { const el = document.getElementById('chart-report-util'); return el.data && el.data.length === 3; }"
    )
    names = page.evaluate("document.getElementById('chart-report-util').data.map(t => t.name)")
    assert names == ["GPU 0 · H100 80GB HBM3", "GPU 1 · H100 80GB HBM3", "CPU"]
    assert page.evaluate("document.getElementById('chart-report-util').layout.xaxis.title.text") == f"Time ({ZONE})"
    assert page.evaluate("document.getElementById('chart-report-util').layout.yaxis.title.text") == "Utilisation (%)"
    bars = page.evaluate("document.getElementById('chart-report-compare').data.map(t => [t.name, t.y])")
    assert bars == [["Period before", [2, 2, 3]], ["This period", [46, 40, 16.25]]]
    page.wait_for_timeout(300)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "report.png"), full_page=True)

    with page.expect_download() as download:
        page.click("#report-csv")
    assert download.value.suggested_filename == f"gpu-01-report-{DAY2.astimezone(ZoneInfo(ZONE)).date()}.csv"
    with open(download.value.path(), newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {
        "mean_util_percent",
        "p95_util_percent",
        "busy_hours",
        "idle_hours",
        "energy_kwh",
        "prompt_tokens",
        "cost_usd",
        "roi_percent",
    } <= set(rows[0])
    assert rows[0]["from"] == local.isoformat()
    assert (rows[0]["mean_util_percent"], rows[0]["p95_util_percent"]) == ("46.0", "87.4")

    # Paper: no navigation, picker or buttons, and charts no wider than an A4 page's text.
    page.emulate_media(media="print")
    for hidden in ("nav.nav", "#report-picker", "#report-csv", "button[data-print]"):
        assert page.locator(hidden).is_hidden(), hidden
    for chart in ("chart-report-util", "chart-report-compare"):
        assert page.locator(f"#{chart}").bounding_box()["width"] <= A4_WIDTH_PX
    assert len(page.pdf(format="A4")) > 10_000
    page.set_viewport_size({"width": round(A4_WIDTH_PX), "height": 1000})  # the printable width of the page
    page.wait_for_timeout(300)
    page.screenshot(path=str(SCREENSHOTS / "report-print.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= round(A4_WIDTH_PX)  # nothing runs off the paper
    assert page.errors == []


def test_the_period_picker_reads_and_writes_iso_24_hour_times_whatever_the_browser_locale(fleet, live_server, page):
    """Native date pickers show the browser locale's format (11/30/2026, 12:18 AM in US English);
    the app's one format is ISO with a 24-hour clock, so the picker's fields are text in it."""
    log_in(page, live_server.url)
    day2 = DAY2.astimezone(ZoneInfo(ZONE))
    page.goto(f"{live_server.url}/reports/machines/gpu-01/?period=day&date={day2.date()}&tz={ZONE}")
    field = page.locator("#report-picker input[name=date]")
    assert field.get_attribute("type") == "text" and field.input_value() == day2.date().isoformat()

    page.select_option("#report-picker select[name=period]", "custom")
    start = day2.replace(hour=13, minute=0, second=0, microsecond=0)  # 1 PM in the reader's zone
    page.fill("#report-picker input[name=from]", start.strftime("%Y-%m-%d %H:%M"))
    page.fill("#report-picker input[name=to]", (start + timedelta(hours=2)).strftime("%Y-%m-%d %H:%M"))
    page.click("#report-picker button[type=submit]")
    page.wait_for_url("**period=custom**")
    shown = page.locator("#report-picker input[name=from]")
    assert shown.get_attribute("type") == "text"
    assert shown.input_value() == start.strftime("%Y-%m-%d %H:%M")  # 24 h: 13:00, not 01:00 PM
    assert start.strftime("%Y-%m-%d 13:00") in page.inner_text("#report-range")  # the report's own heading
    assert page.errors == []
