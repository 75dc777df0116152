"""Delivery to the server: one HTTP POST (standard library), the reply policy, the backoff.

Reply policy (design.md, ``POST /api/v1/ingest``):

* 2xx: delivered; the spool forgets the batch;
* no reply, timeout, 5xx, 429: retry later, exponential backoff with full jitter;
* 413: the body is too large: halve the batch and retry;
* 401/403: the token was refused: say so once, keep spooling, back off;
* other 4xx (400/409/422): the server calls the batch malformed: retry it in halves until the
  refused samples are alone, log the ``error`` and move each to the spool's dead-letter table, so
  it never blocks the samples behind it and good samples sent beside it are not set aside with it.
  The batches carry the count (``refused``), and the machine page shows it.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hwprobe import __version__, http_client

log = logging.getLogger("hwprobe")

INGEST_PATH = "/api/v1/ingest"

OK, RETRY, SPLIT, AUTH, REJECT = "ok", "retry", "split", "auth", "reject"


@dataclass
class Reply:
    """What came back: HTTP status (None: no reply), the parsed JSON body, and why it failed."""

    status: int | None
    body: dict[str, Any] | None = None
    error: str | None = None
    retry_after_s: float | None = None


def classify(status: int | None) -> str:
    """One of OK, RETRY, SPLIT, AUTH, REJECT for an HTTP status (None: no reply at all)."""
    if status is None or status >= 500 or status == 429 or status == 408:
        return RETRY
    if 200 <= status < 300:
        return OK
    if status == 413:
        return SPLIT
    if status in (401, 403):
        return AUTH
    if 400 <= status < 500:
        return REJECT
    return RETRY  # 1xx/3xx: not an answer we can act on


class IngestClient:
    """POSTs JSON documents to ``{server}/api/v1/ingest`` with a bearer token."""

    def __init__(self, server: str, token: str, timeout_s: float = 10.0) -> None:
        parts = urlsplit(server.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server must be an http(s) URL, not {server!r}")
        self._token = token
        self.timeout_s = timeout_s
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path or ''}{INGEST_PATH}"

    def post(self, document: dict[str, Any], timeout_s: float | None = None) -> Reply:
        """Send one document; never raises for network trouble (it becomes ``status=None``)."""
        timeout = timeout_s if timeout_s is not None else self.timeout_s
        response = http_client.send_json("POST", self.url, document, self._token, timeout)
        return Reply(response.status, response.json(), response.error, response.retry_after_s())


class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n)) s."""

    def __init__(self, base_s: float = 1.0, cap_s: float = 60.0, rand: Callable[[], float] = random.random) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._rand = rand
        self.attempts = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt (and count this failure)."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempts, 32)))
        self.attempts += 1
        return self._rand() * ceiling

    def reset(self) -> None:
        self.attempts = 0


def _without_nulls(inventory: dict[str, Any] | None) -> dict[str, Any] | None:
    """The inventory as sent: facts nobody could read are left out rather than sent as null,
    so the server applies its defaults (its string fields do not take null)."""
    if inventory is None:
        return None
    wire = {k: v for k, v in inventory.items() if v is not None and k != "accelerators"}
    if "accelerators" in inventory:
        wire["accelerators"] = [{k: v for k, v in a.items() if v is not None} for a in inventory["accelerators"] or ()]
    return wire


def _wire_samples(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Samples as sent: an unknown process list is left out (the server reads a missing list as
    "none reported"; it does not take null there)."""
    for sample in batch:
        for gpu in sample.get("gpus") or ():
            if gpu.get("processes", ()) is None:
                del gpu["processes"]
    return batch


class Sender:
    """Drains a spool into a client, oldest first, applying the reply policy."""

    def __init__(
        self,
        spool: Any,
        client: IngestClient,
        batch_max: int = 100,
        backoff: Backoff | None = None,
        inventory: dict[str, Any] | None = None,
        slow_s: float = 0.5,
        hold_max: int = 4,
    ) -> None:
        self.spool = spool
        self.client = client
        self.batch_max = max(1, batch_max)
        # Batches grow with the server's latency: while replies take longer than ``slow_s`` (a
        # moving average), windows are held until there are 1 + latency / slow_s of them (at
        # most ``hold_max``), so a loaded server gets fewer, larger requests (its cost is mostly
        # per request: bench/README.md) instead of every agent retrying one window at a time.
        self.slow_s, self.hold_max = slow_s, max(1, hold_max)
        self.latency_s = 0.0
        self.backoff = backoff or Backoff()
        self._limit = self.batch_max
        # The inventory rides along until one batch carrying it is accepted.
        self._inventory_pending = inventory
        self._last_inventory = inventory
        self._failing: str | None = None
        self.sent = 0

    def set_inventory(self, inventory: dict[str, Any]) -> None:
        """Send this inventory with the next batch if it differs from the last one."""
        if inventory != self._last_inventory:
            self._last_inventory = inventory
            self._inventory_pending = inventory

    def _fail(self, kind: str, message: str, level: int = logging.WARNING) -> None:
        # One line when a failure streak starts or changes kind, not one per retry.
        if self._failing != kind:
            log.log(level, "%s", message)
            self._failing = kind
        else:
            log.debug("%s", message)

    def hold(self) -> int:
        """How many windows to gather before sending: 1, more while the server answers slowly."""
        return min(self.hold_max, 1 + int(self.latency_s / self.slow_s))

    def step(self, timeout_s: float | None = None, force: bool = False) -> float | None:
        """Send one batch. Returns None (nothing to send yet), 0.0 (send again now) or seconds to
        wait; ``force`` sends what there is (the final flush)."""
        batch = self.spool.peek(self._limit)
        if not batch:
            # A 413 shrinks batches until the backlog is gone; growing back sooner would bounce
            # off the same limit every other request.
            self._limit = self.batch_max
            return None
        # min(): after a split the batch limit may be under what hold() asks for.
        if len(batch) < min(self.hold(), self._limit) and not force:
            return None  # the next window wakes the sender again
        started = time.monotonic()
        inventory = self._inventory_pending
        document = {
            "agent_version": __version__,
            "spool_id": self.spool.spool_id,
            "dropped": self.spool.dropped,
            "refused": self.spool.dead,
            "inventory": _without_nulls(inventory),
            "samples": _wire_samples(batch),
        }
        reply = self.client.post(document, timeout_s=timeout_s)
        outcome = classify(reply.status)
        first, last = batch[0]["seq"], batch[-1]["seq"]
        if outcome == OK:
            self.latency_s = 0.7 * self.latency_s + 0.3 * (time.monotonic() - started)
            self.spool.ack([sample["seq"] for sample in batch])
            self.sent += len(batch)
            if self._failing is not None:
                log.info(
                    "delivering again: sent seq %d-%d after %d failed attempts", first, last, self.backoff.attempts
                )
                self._failing = None
            self.backoff.reset()
            if inventory is self._inventory_pending:
                self._inventory_pending = None
            return 0.0
        if outcome == SPLIT:
            if len(batch) > 1:
                self._limit = max(1, len(batch) // 2)
                log.info("server says the body is too large (413): retrying with %d samples", self._limit)
                return 0.0
            self.spool.dead_letter([first], "413: a single sample exceeds the server's body limit")
            log.error("sample seq %d alone is over the server's body limit: moved to dead letters", first)
            return 0.0
        if outcome == REJECT and inventory is not None and "inventory" in (reply.error or ""):
            # The samples may be fine: without this, every batch would carry the refused
            # inventory and be refused in turn.
            log.error("server refused the inventory (%s: %s): sending samples without it", reply.status, reply.error)
            if inventory is self._inventory_pending:
                self._inventory_pending = None
            return 0.0
        if outcome == REJECT and len(batch) > 1:
            # One bad sample must not take the good ones beside it into the dead letters: halve
            # until it is alone (log2(n) more requests, only when something is wrong).
            self._limit = max(1, len(batch) // 2)
            log.warning(
                "server refused seq %d-%d as malformed (%s: %s): retrying in halves to set aside only the bad samples",
                first,
                last,
                reply.status,
                reply.error,
            )
            return 0.0
        if outcome == REJECT:
            self.spool.dead_letter([first], f"{reply.status}: {reply.error}")
            log.error(
                "server refused seq %d as malformed (%s: %s): moved to dead letters (hwprobe dead-letters lists them)",
                first,
                reply.status,
                reply.error,
            )
            return 0.0
        delay = self.backoff.next_delay()
        if reply.retry_after_s is not None:
            delay = min(self.backoff.cap_s, max(delay, reply.retry_after_s))
        if outcome == AUTH:
            self._fail(
                "auth",
                f"token refused ({reply.status}): re-enroll this machine; keeping samples in the spool",
                logging.ERROR,
            )
        else:
            why = reply.error if reply.status is None else f"HTTP {reply.status}: {reply.error}"
            self._fail("retry", f"cannot deliver to {self.client.url} ({why}); spooling and retrying with backoff")
        return delay


def token_from(token: str | None, token_file: str | None) -> str | None:
    """The agent token: --token, else --token-file, else $HWPROBE_TOKEN, else $HWPROBE_TOKEN_FILE."""
    if token:
        return token
    path = token_file or (None if os.environ.get("HWPROBE_TOKEN") else os.environ.get("HWPROBE_TOKEN_FILE"))
    if path:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    return os.environ.get("HWPROBE_TOKEN") or None
