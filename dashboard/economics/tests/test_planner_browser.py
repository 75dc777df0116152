"""The planner page in a real browser (Debian's chromium through Playwright): plan, chart, backfill."""

from __future__ import annotations

import pytest

from conftest import SCREENSHOTS, log_in

from . import seed

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.fixture
def fleet(transactional_db, django_user_model, settings):
    from django.contrib.auth.models import Group

    from dashboard.economics.catalogue import shipped_rows
    from dashboard.economics.models import HardwareSpec

    settings.TIME_ZONE = "UTC"
    # An earlier transactional test flushes every table, the catalogue its migration loaded included.
    for row in shipped_rows():
        HardwareSpec.objects.update_or_create(name=row["name"], shipped=True, defaults=row)
    olga = django_user_model.objects.create_user("olga", password="olga-pass")
    olga.groups.add(Group.objects.get_or_create(name="operator")[0])
    seed.priced_machine()


def test_an_operator_plans_a_workload_sees_the_gaps_and_turns_backfill_on(fleet, live_server, page):
    log_in(page, live_server.url, "olga", "olga-pass")
    page.click("nav >> text=Plan")
    page.wait_for_url(live_server.url + "/economics/plan/")
    assert page.locator("#plan-ranking-table tbody tr").count() >= 2
    assert page.locator("#plan-ranking-table tr[data-key='fleet:gpu-01']").count() == 1
    # the spare model rows stay hidden until asked for
    assert page.locator("tr.serve-row[data-row='1']").is_hidden()
    page.click("#plan-add-model")
    assert page.locator("tr.serve-row[data-row='1']").is_visible()
    page.fill("input[name=s1_params_b]", "405")
    page.fill("input[name=s1_tokens_per_day]", "10000")
    page.fill("input[name=t0_params_b]", "8")
    page.fill("input[name=t0_tokens_per_day]", "50000000")
    page.click("#plan-form button[type=submit]")
    page.wait_for_url("**s1_params_b=405**")
    assert "train 8B lora" in page.locator("#plan-ranking").inner_text()
    assert page.locator("#plan-streamed-table td[data-size='405B'][data-mode='streamed']").count() >= 1

    page.wait_for_function("() => { const el = document.getElementById('plan-profile'); return el && el.data; }")
    names = page.evaluate("document.getElementById('plan-profile').data.map(t => t.name)")
    assert names == ["GPU utilisation (%)", "Generated tokens per week"]
    assert "48.0 GPU-hours a week" in page.locator("#gaps-idle").inner_text()

    page.click("#backfill-form button[type=submit]")
    page.wait_for_url("**/economics/plan/#plan-gaps")
    assert "Backfill policy: on" in page.locator("#backfill-policy").inner_text()
    assert "serving takes them back" in page.locator("#backfill-policy").inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "plan.png"), full_page=True)
    assert page.errors == []
