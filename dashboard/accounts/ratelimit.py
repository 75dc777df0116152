"""A limit on API calls made with personal tokens: a fixed one-minute window per user, in the cache.

A script with a leaked or looping token must not take the server down; past
``API_TOKEN_RATE_PER_MIN`` calls in a minute it gets 429 with ``Retry-After`` until the minute
ends. Counted per user, not per token, so minting more tokens buys no more calls. Sessions (people
in a browser) and agents' machine tokens are not counted: the pages poll, and ingest is paced by
the agents. With ``REDIS_URL`` the cache is Redis, so every web worker shares one count; without
it each process counts alone (single-host mode).
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.core.cache import cache

log = logging.getLogger(__name__)
WINDOW_S = 60


class RateLimited(Exception):
    """Over the limit; ``retry_after_s`` is when the window ends."""

    def __init__(self, retry_after_s: int):
        super().__init__(
            f"too many requests with personal API tokens: at most {settings.API_TOKEN_RATE_PER_MIN} a minute; "
            f"retry in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


def window_key(user_id: int, now: float) -> str:
    """The cache key counting ``user_id``'s calls in the window that holds ``now``."""
    return f"ratelimit:token-user:{user_id}:{int(now // WINDOW_S)}"


def count_call(user_id: int, now: float | None = None) -> None:
    """Count one token call of ``user_id``; raise RateLimited once the window's calls pass the limit."""
    limit = settings.API_TOKEN_RATE_PER_MIN
    if limit <= 0:
        return
    now = time.time() if now is None else now
    window = int(now // WINDOW_S)
    key = window_key(user_id, now)
    try:
        cache.add(key, 0, timeout=WINDOW_S + 5)  # the window's counter, if the first call
        try:
            calls = cache.incr(key)
        except ValueError:  # expired between add and incr: this call opens it
            cache.set(key, 1, timeout=WINDOW_S + 5)
            calls = 1
    except Exception as exc:  # noqa: BLE001 - Redis away: the call goes uncounted rather than failing (issue 10)
        log.warning("API token calls not counted: the cache is unreachable (%s)", exc)
        return
    if calls > limit:
        raise RateLimited(retry_after_s=max(1, (window + 1) * WINDOW_S - int(now)))
