"""Webhook delivery: a JSON POST per alert event, retried with exponential backoff.

Deliveries are rows (``WebhookDelivery``) written when an alert fires or resolves; ``deliver_due``
(run every 15 s by ``tasks.deliver``) sends the ones that are due. A failure (connection error,
timeout, 5xx, 408, 429) is retried after ``ALERT_WEBHOOK_BACKOFF_S`` × 2^(attempts-1) seconds (at
most an hour) until ``ALERT_WEBHOOK_MAX_ATTEMPTS``; any other 4xx gives up at once, since sending the
same body again will not change the answer.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.utils import timezone

from .models import Alert, WebhookDelivery

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 3600
RETRYABLE_4XX = (408, 429)


class DeliveryError(Exception):
    def __init__(self, message: str, retry: bool = True):
        super().__init__(message)
        self.retry = retry


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def payload(alert: Alert, event: str) -> dict[str, Any]:
    """The JSON body: the event, the alert and its rule; ``text`` makes Slack-style webhooks show it."""
    rule = alert.rule
    label = "FIRING" if event == WebhookDelivery.Event.FIRED else "RESOLVED"
    return {
        "event": event,
        "text": f"[{label}] {rule.name}: {alert.message}",
        "alert": {
            "id": alert.pk,
            "key": alert.key,
            "message": alert.message,
            "machine": alert.machine.name if alert.machine else None,
            "gpu": alert.gpu_index,
            "job": alert.job_id,
            "fired_at": _iso(alert.fired_at),
            "resolved_at": _iso(alert.resolved_at),
            "resolution": alert.resolution or None,
        },
        "rule": {"id": rule.pk, "name": rule.name, "kind": rule.kind, "threshold": rule.threshold, "unit": rule.unit},
    }


def post(url: str, body: dict[str, Any], timeout_s: float) -> int:
    """POST ``body`` as JSON; the HTTP status on 2xx, else ``DeliveryError`` saying whether to retry."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise DeliveryError(f"only http and https URLs are allowed, not {url!r}", retry=False)
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "hwdash-alerts"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read(65536)
            return response.status
    except urllib.error.HTTPError as exc:
        retry = exc.code >= 500 or exc.code in RETRYABLE_4XX
        raise DeliveryError(f"HTTP {exc.code} {exc.reason}", retry=retry) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{type(reason).__name__}: {reason}") from None


def backoff(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failure: base, 2 × base, 4 × base..., at most an hour."""
    return timedelta(seconds=min(MAX_BACKOFF_S, settings.ALERT_WEBHOOK_BACKOFF_S * 2 ** (attempts - 1)))


def record_attempt(delivery: Any, now: datetime, send: Callable[[], None], what: str) -> bool:
    """Run ``send`` once for ``delivery`` and record the outcome on it; True if it went out.

    ``delivery`` is any row with ``attempts``, ``last_error``, ``next_try_at``, ``gave_up_at`` and
    ``delivered_at`` (alert webhooks, weekly reports): a failure ``send`` raises as DeliveryError
    is retried after ``backoff`` until ALERT_WEBHOOK_MAX_ATTEMPTS, one that must not be retried is
    given up at once.
    """
    delivery.attempts += 1
    try:
        send()
    except DeliveryError as exc:
        delivery.last_error = str(exc)[:500]
        if not exc.retry or delivery.attempts >= settings.ALERT_WEBHOOK_MAX_ATTEMPTS:
            delivery.gave_up_at = now
            log.warning("%s: giving up after %d attempts: %s", what, delivery.attempts, exc)
        else:
            delivery.next_try_at = now + backoff(delivery.attempts)
            log.info("%s failed (attempt %d): %s", what, delivery.attempts, exc)
        delivered = False
    else:
        delivery.delivered_at, delivery.last_error = now, ""
        delivered = True
    delivery.save(update_fields=["attempts", "last_error", "gave_up_at", "next_try_at", "delivered_at"])
    return delivered


def attempt(delivery: WebhookDelivery, now: datetime) -> bool:
    """Try one alert webhook once and record the outcome; True if it was delivered."""
    return record_attempt(
        delivery,
        now,
        lambda: post(delivery.url, delivery.payload, settings.ALERT_WEBHOOK_TIMEOUT_S),
        f"webhook {delivery.event} for alert {delivery.alert_id}",
    )


def deliver_due(now: datetime | None = None, budget_s: float = 60.0) -> int:
    """Send the deliveries that are due, oldest first, for about ``budget_s`` seconds; how many got through."""
    now = now or timezone.now()
    started = time.monotonic()
    pending = WebhookDelivery.objects.filter(delivered_at=None, gave_up_at=None)
    delivered = 0
    for delivery in pending.filter(next_try_at__lte=now).order_by("created_at", "pk")[:100]:
        if time.monotonic() - started > budget_s:
            break
        if pending.filter(alert_id=delivery.alert_id, pk__lt=delivery.pk).exists():
            continue  # "resolved" waits until "fired" went out (or was given up)
        # Claim it by moving its next try past our own timeout: an overlapping run skips it.
        lease = now + timedelta(seconds=settings.ALERT_WEBHOOK_TIMEOUT_S + 30)
        if not pending.filter(pk=delivery.pk, next_try_at=delivery.next_try_at).update(next_try_at=lease):
            continue
        delivered += attempt(delivery, now)
    return delivered
