"""The alerts page, the rule form (admins only) and the banner on the fleet page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from conftest import make_batch
from dashboard.alerts.evaluate import evaluate
from dashboard.alerts.models import Alert, AlertRule
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.payload import Batch

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("own_rules_only")]


def rule_form(**kw) -> dict:
    return {
        "name": "Hot GPU",
        "kind": "gpu_temperature",
        "threshold": "85",
        "machine": "",
        "webhook_url": "",
        "enabled": "on",
    } | kw


@pytest.fixture
def offline_alert(machine) -> Alert:
    AlertRule.objects.create(name="Offline", kind="machine_offline", threshold=5)
    store_batch(machine, Batch.model_validate(make_batch([1])))
    machine.refresh_from_db()
    machine.last_seen_at = timezone.now() - timedelta(minutes=10)
    machine.save()
    evaluate()
    return Alert.objects.get()


def test_a_stranger_is_sent_to_the_login_page(client):
    rule = AlertRule.objects.create(name="Offline", kind="machine_offline", threshold=5)
    for url in ("/alerts/", "/alerts/rules/new/", f"/alerts/rules/{rule.pk}/"):
        r = client.get(url)
        assert r.status_code == 302 and r["Location"].startswith("/login/?next="), url


def test_an_admin_creates_a_rule(client, admin_user, machine):
    client.force_login(admin_user)
    page = client.get("/alerts/rules/new/").content.decode()
    assert "GPU temperature: °C" in page and "Every machine" in page

    r = client.post("/alerts/rules/new/", rule_form(machine=str(machine.pk), webhook_url="https://hooks.example.com/x"))
    assert r.status_code == 302 and r["Location"] == "/alerts/"
    rule = AlertRule.objects.get(created_by=admin_user)
    assert (rule.name, rule.kind, rule.threshold, rule.machine, rule.created_by, rule.enabled) == (
        "Hot GPU",
        "gpu_temperature",
        85.0,
        machine,
        admin_user,
        True,
    )
    page = client.get("/alerts/").content.decode()
    assert "Hot GPU" in page and "85 °C" in page and "https://hooks.example.com/x" in page


def test_an_admin_disables_a_rule(client, admin_user):
    rule = AlertRule.objects.create(name="Offline", kind="machine_offline", threshold=5)
    client.force_login(admin_user)
    r = client.post(
        f"/alerts/rules/{rule.pk}/", rule_form(name="Offline", kind="machine_offline", threshold="5", enabled="")
    )
    assert r.status_code == 302
    rule.refresh_from_db()
    assert rule.enabled is False and rule.created_by is None  # editing does not claim the rule


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"threshold": "500"}, "threshold", "between 20 and 120"),
        ({"kind": "machine_offline", "threshold": "0"}, "threshold", "more than 0"),
        ({"threshold": "hot"}, "threshold", "Enter a number."),
        ({"webhook_url": "ftp://example.com/hook"}, "webhook_url", "Enter a valid URL."),
        ({"name": ""}, "name", "This field is required."),
    ],
)
def test_the_form_shows_each_error_next_to_its_field(client, admin_user, fields, field, message):
    client.force_login(admin_user)
    r = client.post("/alerts/rules/new/", rule_form(**fields))
    assert r.status_code == 200
    page = r.content.decode()
    start = page.index(f'id="field-{field}"')
    assert message in page[start : page.index("</div>", page.index("errorlist", start))]
    assert not AlertRule.objects.filter(created_by=admin_user).exists()


def test_operators_and_viewers_read_but_cannot_change_rules(client, operator, viewer):
    rule = AlertRule.objects.create(name="Offline", kind="machine_offline", threshold=5)
    for user in (operator, viewer):
        client.force_login(user)
        page = client.get("/alerts/").content.decode()
        assert "Offline" in page and "5 min" in page
        assert "New rule" not in page and f"/alerts/rules/{rule.pk}/" not in page
        assert client.get("/alerts/rules/new/").status_code == 403
        assert client.post("/alerts/rules/new/", rule_form()).status_code == 403
        assert client.post(f"/alerts/rules/{rule.pk}/", rule_form(enabled="")).status_code == 403
    assert AlertRule.objects.filter(created_by__isnull=False).count() == 0
    assert AlertRule.objects.get(pk=rule.pk).enabled


def test_the_alerts_page_lists_open_and_resolved_alerts(client, viewer, machine, offline_alert):
    client.force_login(viewer)
    page = client.get("/alerts/").content.decode()
    assert offline_alert.message in page and "1 open" in page
    machine.last_seen_at = timezone.now()
    machine.save()
    evaluate()
    page = client.get("/alerts/").content.decode()
    assert "No open alerts." in page and "condition cleared" in page


def test_the_fleet_page_shows_a_banner_and_the_nav_a_count(client, viewer, machine, offline_alert):
    client.force_login(viewer)
    page = client.get("/").content.decode()
    assert 'id="alert-banner"' in page and "1 open alert<" in page and offline_alert.message in page
    assert 'id="nav-alerts-count">1<' in page
    # The banner is not part of the live refresh, which replaces only the machine cards.
    assert 'id="alert-banner"' not in client.get("/?partial=1").content.decode()


def test_no_banner_without_open_alerts(client, viewer, machine):
    client.force_login(viewer)
    page = client.get("/").content.decode()
    assert 'id="alert-banner"' not in page and 'id="nav-alerts-count"' not in page
    assert 'href="/alerts/"' in page
