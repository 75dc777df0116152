"""In a real browser: an admin adds a rule with the form, the evaluation fires it, the fleet page shows it."""

from __future__ import annotations

import json

import pytest

from conftest import SCREENSHOTS, log_in, make_batch
from dashboard.alerts.evaluate import evaluate
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import parse_batch
from dashboard.jobs.tests.test_browser import worker

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.fixture
def hot_gpu(transactional_db, django_user_model) -> None:
    django_user_model.objects.create_superuser("admin", "", "admin-pass")
    hot = make_batch([1], gpus=2)
    hot["samples"][0]["gpus"][1]["temp_c"] = {"min": 90, "mean": 92, "max": 94}
    store_batch(Machine.objects.create(name="gpu-01"), parse_batch(json.dumps(hot).encode()))


def test_an_admin_adds_a_rule_and_the_fleet_page_shows_its_alert(hot_gpu, live_server, page):
    log_in(page, live_server.url, "admin", "admin-pass", then="/alerts/")
    page.click("text=New rule")
    page.fill("#id_name", "Hot GPU")
    page.select_option("#id_kind", "gpu_temperature")
    page.fill("#id_threshold", "200")
    page.click(".rule-form button[type=submit]")
    assert "between 20 and 120" in page.inner_text("#field-threshold .errorlist")
    page.fill("#id_threshold", "85")
    page.click(".rule-form button[type=submit]")
    page.wait_for_url(live_server.url + "/alerts/")
    assert "85 °C" in page.inner_text("#alert-rules")

    worker(evaluate)  # Playwright's event loop runs in this thread: the ORM runs in another
    page.goto(live_server.url + "/")
    banner = page.inner_text("#alert-banner")
    assert "1 open alert" in banner and "gpu-01 GPU 1 is at 92 °C (over 85 °C)" in banner
    assert page.inner_text("#nav-alerts-count") == "1"
    page.screenshot(path=str(SCREENSHOTS / "fleet-alert.png"), full_page=True)
    page.goto(live_server.url + "/alerts/")
    page.screenshot(path=str(SCREENSHOTS / "alerts.png"), full_page=True)
    assert page.errors == []
