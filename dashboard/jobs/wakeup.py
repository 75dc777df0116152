"""Wakes a machine's long-poll (``POST /api/v1/agent/jobs/next``) as soon as a job is placed there.

The database is the truth; a wake-up only says "look again now". With ``REDIS_URL`` set, placement
publishes on one Redis channel per machine and a waiting request subscribes to its own; it still
looks at the database every ``JOB_POLL_RECHECK_S``, so a wake-up lost while Redis was away delays a
job by that much at most. Without Redis (single-host mode), or while Redis is down, the request
looks every ``JOB_POLL_INTERVAL_S`` instead. A failure of Redis never fails a request: placement
has committed before it publishes, and the poll falls back to looking at the database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis
from django.conf import settings

log = logging.getLogger(__name__)
T = TypeVar("T")

_pool: redis.ConnectionPool | None = None
_pool_url: str | None = None


def channel(machine_id: int) -> str:
    return f"hwdash:jobs:machine:{machine_id}"


def _client() -> redis.Redis | None:
    """A client on a per-process pool, or None in single-host mode (no REDIS_URL)."""
    global _pool, _pool_url
    url = settings.REDIS_URL
    if not url:
        return None
    if _pool is None or _pool_url != url:
        # Short timeouts: a Redis that is away must cost a request a second, not a minute.
        _pool = redis.ConnectionPool.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0)
        _pool_url = url
    return redis.Redis(connection_pool=_pool)


def notify(machine_ids: Iterable[int]) -> None:
    """Tell the long-polls of these machines that a job was placed (after the placement committed)."""
    client = _client()
    if client is None:
        return
    try:
        for machine_id in set(machine_ids):
            client.publish(channel(machine_id), b"placed")
    except (redis.RedisError, OSError) as exc:
        log.warning("could not wake the machines' job polls (%s); they look at the database anyway", exc)


def _subscribe(machine_id: int) -> Any:
    client = _client()
    if client is None:
        return None
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(channel(machine_id))
    except (redis.RedisError, OSError) as exc:
        log.info("Redis is unreachable (%s); this job poll looks at the database instead", exc)
        pubsub.close()
        return None
    return pubsub


def wait_for(check: Callable[[], T | None], machine_id: int, timeout_s: float) -> T | None:
    """``check()`` now and whenever woken (or every poll interval) until it returns a value or time is up.

    Subscribes before the first look, so a job placed between the look and the wait still wakes it.
    """
    deadline = time.monotonic() + timeout_s
    pubsub = _subscribe(machine_id) if timeout_s > 0 else None
    try:
        while True:
            found = check()
            if found is not None:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if pubsub is None:
                time.sleep(min(left, settings.JOB_POLL_INTERVAL_S))
                continue
            try:
                pubsub.get_message(timeout=min(left, settings.JOB_POLL_RECHECK_S))
            except (redis.RedisError, OSError) as exc:
                log.info("Redis went away during a job poll (%s); looking at the database instead", exc)
                pubsub.close()
                pubsub = None
    finally:
        if pubsub is not None:
            try:
                pubsub.close()
            except (redis.RedisError, OSError):
                pass  # the connection is gone already; nothing to release
