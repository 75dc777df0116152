"""The RoI page and the capacity table in a real browser (Debian's chromium through Playwright)."""

from __future__ import annotations

import pytest

from conftest import BROWSER_ZONE as ZONE
from conftest import SCREENSHOTS, log_in

from . import seed

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.fixture
def fleet(transactional_db, django_user_model, settings):
    settings.TIME_ZONE = "UTC"
    django_user_model.objects.create_user("victor", password="victor-pass")
    seed.priced_machine()
    seed.shared_machine()


def test_the_roi_page_charts_value_against_cost_and_shows_capacity(fleet, live_server, page):
    log_in(page, live_server.url)
    page.click("nav >> text=RoI")
    page.wait_for_url(live_server.url + "/economics/")
    assert page.locator("#machines-roi tr[data-machine]").count() == 2
    assert page.locator("#assembly-table .badge.best").count() >= 1
    # times in the browser's zone, and the page says which
    assert f"Times in {ZONE}" in page.locator("#assemblies").inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "roi.png"), full_page=True)

    page.click("#machines-roi >> text=gpu-01")
    page.wait_for_url(live_server.url + "/economics/machines/gpu-01/")
    for chart in ("roi-cumulative", "roi-breakdown"):
        page.wait_for_function(
            "id => { const el = document.getElementById(id); return el && el.data && el.data.length > 0; }", arg=chart
        )
    names = page.evaluate("document.getElementById('roi-cumulative').data.map(t => t.name)")
    assert names[:2] == ["Cumulative cost", "Cumulative value"]
    assert page.evaluate("document.getElementById('roi-cumulative').layout.yaxis.title.text") == "Cumulative (USD)"
    assert page.evaluate("document.getElementById('roi-breakdown').layout.yaxis.title.text") == "Cost per day (USD)"
    assert page.evaluate("document.getElementById('roi-breakdown').layout.barmode") == "stack"
    assert ZONE in page.evaluate("document.getElementById('roi-cumulative').layout.xaxis.title.text")
    # the first bar is the first day of service, UTC midnight shown in Adelaide (+09:30 or +10:30)
    first = page.evaluate("document.getElementById('roi-breakdown').data[0].x[0]")
    assert first.endswith(("09:30:00", "10:30:00"))

    table = page.locator("#capacity-table")
    assert table.locator("tbody tr").count() == 7
    assert table.locator("tr[data-size='405B'] td[data-fits='no']").count() >= 1
    assert table.locator("tr[data-size='1B'] td[data-fits='yes']").count() == 6
    assert "context 4096 tokens, batch 1" in page.locator("#capacity").inner_text()
    page.fill("input[name=context_tokens]", "131072")
    page.fill("input[name=batch]", "8")
    page.click("#economics-params button[type=submit]")
    page.wait_for_url("**batch=8**")
    assert "context 131072 tokens, batch 8" in page.locator("#capacity").inner_text()
    page.wait_for_timeout(300)
    page.screenshot(path=str(SCREENSHOTS / "roi-machine.png"), full_page=True)
    assert page.errors == []


def test_the_machine_page_draws_the_roi_chart_without_telemetry_charts(fleet, live_server, page):
    log_in(page, live_server.url)
    page.goto(live_server.url + "/machines/gpu-02/")  # no telemetry: the page loads no Plotly itself
    page.wait_for_function(
        "() => { const el = document.getElementById('roi-cumulative'); return el && el.textContent.length > 0; }"
    )
    assert page.locator("#capacity-table tbody tr").count() == 7
    assert "Sharing costs serving 18%" in page.locator("#share-verdict").inner_text()
    assert page.errors == []


@pytest.fixture
def bare(fleet):
    """gpu-09: four hours of telemetry, no cost profile (made before Playwright's loop starts)."""
    machine = seed.machine_with("gpu-09", 2)
    seed.hours(machine, seed.hours_ago(5), 4, 300.0, 50.0)


def test_a_machine_without_a_cost_profile_says_so_in_a_line_not_a_blank_chart(bare, live_server, page):
    log_in(page, live_server.url)
    page.goto(live_server.url + "/economics/machines/gpu-09/")
    # The fleet's value rates apply to it, so its value is charted; it has no costs to break down.
    page.wait_for_selector("#roi-breakdown.empty p")
    assert "No costs yet" in page.inner_text("#roi-breakdown")
    # The line takes a line's height, not the 280 px the chart would have.
    assert page.evaluate("document.getElementById('roi-breakdown').offsetHeight") < 80
    page.wait_for_function("document.getElementById('roi-cumulative').data?.length > 0")
    assert page.errors == []
