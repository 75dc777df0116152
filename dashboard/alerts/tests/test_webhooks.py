"""Webhook delivery against a real local HTTP server: retries with backoff, then delivery or giving up."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from dashboard.alerts import tasks
from dashboard.alerts.evaluate import evaluate
from dashboard.alerts.models import AlertRule, WebhookDelivery
from dashboard.alerts.webhooks import deliver_due

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("own_rules_only")]


class Hook:
    """A local endpoint answering with the given statuses in turn (the last one repeats)."""

    def __init__(self, statuses: list[int], delay_s: float = 0.0):
        self.statuses, self.delay_s = list(statuses), delay_s
        self.requests: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                time.sleep(hook.delay_s)
                status = hook.statuses.pop(0) if len(hook.statuses) > 1 else hook.statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_factory() -> Iterator:
    hooks: list[Hook] = []

    def make(statuses: list[int], delay_s: float = 0.0) -> Hook:
        hooks.append(Hook(statuses, delay_s))
        return hooks[-1]

    yield make
    for h in hooks:
        h.close()


@pytest.fixture
def t0() -> datetime:
    return timezone.now().replace(microsecond=0)


def an_offline_alert(machine, url: str, t0: datetime) -> None:
    """A machine-offline rule with a webhook, and the machine silent long enough to fire it at t0."""
    AlertRule.objects.create(name="Offline", kind="machine_offline", threshold=5, webhook_url=url, created_at=t0)
    machine.last_seen_at = t0 - timedelta(minutes=6)
    machine.save()
    assert evaluate(t0)["fired"] == 1


def test_it_retries_with_backoff_and_delivers_on_the_third_attempt(machine, hook_factory, t0, settings):
    settings.ALERT_WEBHOOK_BACKOFF_S = 30
    hook = hook_factory([500, 500, 200])
    an_offline_alert(machine, hook.url, t0)

    assert deliver_due(t0) == 0
    d = WebhookDelivery.objects.get()
    assert (d.attempts, d.next_try_at, d.last_error) == (
        1,
        t0 + timedelta(seconds=30),
        "HTTP 500 Internal Server Error",
    )

    assert deliver_due(t0 + timedelta(seconds=29)) == 0  # not due yet: no request
    assert len(hook.requests) == 1
    assert deliver_due(t0 + timedelta(seconds=30)) == 0
    d.refresh_from_db()
    assert (d.attempts, d.next_try_at) == (2, t0 + timedelta(seconds=90))  # 30 s, then 60 s

    assert deliver_due(t0 + timedelta(seconds=90)) == 1
    d.refresh_from_db()
    assert (d.attempts, d.delivered_at, d.last_error) == (3, t0 + timedelta(seconds=90), "")
    assert deliver_due(t0 + timedelta(hours=2)) == 0  # delivered once, never again
    assert len(hook.requests) == 3

    request = hook.requests[-1]
    assert request["path"] == "/hook" and request["headers"]["Content-Type"] == "application/json"
    body = request["body"]
    assert body["event"] == "fired" and body["rule"]["kind"] == "machine_offline"
    assert body["alert"]["machine"] == "gpu-01" and body["alert"]["resolved_at"] is None
    assert body["text"].startswith("[FIRING] Offline: gpu-01 has sent nothing for 6 min")
    assert all(r["body"] == body for r in hook.requests)  # each retry sends the same document


def test_it_gives_up_after_the_maximum_number_of_attempts(machine, hook_factory, t0, settings):
    settings.ALERT_WEBHOOK_MAX_ATTEMPTS = 3
    settings.ALERT_WEBHOOK_BACKOFF_S = 10
    hook = hook_factory([503])
    an_offline_alert(machine, hook.url, t0)

    for later in (0, 10, 30, 70, 3600):
        deliver_due(t0 + timedelta(seconds=later))
    d = WebhookDelivery.objects.get()
    assert d.attempts == 3 and d.gave_up_at == t0 + timedelta(seconds=30) and d.delivered_at is None
    assert d.last_error == "HTTP 503 Service Unavailable"
    assert len(hook.requests) == 3


def test_a_client_error_is_not_retried(machine, hook_factory, t0):
    hook = hook_factory([404])
    an_offline_alert(machine, hook.url, t0)
    deliver_due(t0)
    deliver_due(t0 + timedelta(hours=1))
    d = WebhookDelivery.objects.get()
    assert d.attempts == 1 and d.gave_up_at == t0 and len(hook.requests) == 1


def test_a_timeout_and_a_refused_connection_are_retried(machine, hook_factory, t0, settings):
    settings.ALERT_WEBHOOK_TIMEOUT_S = 0.3
    slow = hook_factory([200], delay_s=1.0)
    an_offline_alert(machine, slow.url, t0)
    deliver_due(t0)
    d = WebhookDelivery.objects.get()
    assert d.attempts == 1 and d.delivered_at is None and d.gave_up_at is None
    assert "timed out" in d.last_error

    closed = hook_factory([200])
    closed.close()  # nothing listens on its port any more
    WebhookDelivery.objects.filter(pk=d.pk).update(url=closed.url)
    deliver_due(t0 + timedelta(hours=1))
    d.refresh_from_db()
    assert d.attempts == 2 and d.gave_up_at is None and "refused" in d.last_error.lower()


def test_resolved_waits_for_fired_and_both_arrive_in_order(machine, hook_factory, t0, settings):
    settings.ALERT_WEBHOOK_BACKOFF_S = 30
    hook = hook_factory([500, 200])
    an_offline_alert(machine, hook.url, t0)
    deliver_due(t0)  # "fired" fails once
    machine.last_seen_at = t0 + timedelta(seconds=10)
    machine.save()
    evaluate(t0 + timedelta(seconds=10))  # resolves: "resolved" is queued behind "fired"
    assert deliver_due(t0 + timedelta(seconds=10)) == 0
    assert deliver_due(t0 + timedelta(seconds=30)) == 2
    assert [r["body"]["event"] for r in hook.requests] == ["fired", "fired", "resolved"]


def test_only_http_urls_are_posted(machine, t0):
    an_offline_alert(machine, "file:///etc/passwd", t0)
    deliver_due(t0)
    d = WebhookDelivery.objects.get()
    assert d.gave_up_at == t0 and "only http and https" in d.last_error


def test_the_celery_task_delivers_what_is_due(machine, hook_factory):
    hook = hook_factory([200])
    an_offline_alert(machine, hook.url, timezone.now())
    assert tasks.deliver() == 1
    assert len(hook.requests) == 1
