"""GET /healthz: can this process serve? The database answers a query and the broker is reachable.

Docker's HEALTHCHECK, docker-compose and load balancers call it by IP address (`127.0.0.1:8000`),
a Host that ALLOWED_HOSTS rightly refuses for pages. So `HealthzMiddleware`, first in MIDDLEWARE,
answers the one path before CommonMiddleware validates the Host and before SecurityMiddleware
could redirect to HTTPS. Nothing in the answer is built from the Host header, so skipping the
validation for it opens nothing. The body names what failed in a sentence; details go to the log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

log = logging.getLogger(__name__)

PATH = "/healthz"
REDIS_TIMEOUT_S = 2.0  # well inside the probes' own timeouts (5 s in docker-compose.yml)
# The folders kombu's filesystem transport reads and writes (settings.CELERY_BROKER_TRANSPORT_OPTIONS).
BROKER_FOLDER_OPTIONS = ("data_folder_in", "data_folder_out", "processed_folder", "control_folder")


def database_problem() -> str | None:
    """None when the default database answers `SELECT 1`, else what went wrong, in a sentence."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        log.warning("healthz: the database did not answer", exc_info=True)
        return f"the database did not answer a query ({type(exc).__name__})"
    return None


def broker_problem() -> str | None:
    """None when the Celery broker is reachable, else what went wrong, in a sentence.

    With REDIS_URL, a Redis PING within REDIS_TIMEOUT_S; in single-host mode, the filesystem
    transport's folders exist and this process may write to them.
    """
    if settings.REDIS_URL:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
        )
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            log.warning("healthz: Redis did not answer", exc_info=True)
            return f"Redis did not answer a PING within {REDIS_TIMEOUT_S:g} s ({type(exc).__name__})"
        finally:
            client.close()
        return None
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    for folder in sorted({options[name] for name in BROKER_FOLDER_OPTIONS if name in options}):
        if not os.path.isdir(folder):
            return f"the broker folder {folder} is missing"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"the broker folder {folder} is not writable"
    return None


@never_cache
@require_safe
def healthz(request: HttpRequest) -> HttpResponse:
    """200 with every part "ok", or 503 with a sentence for each part that failed."""
    problems = {"database": database_problem(), "broker": broker_problem()}
    healthy = not any(problems.values())
    body = {"status": "ok" if healthy else "error"} | {part: problem or "ok" for part, problem in problems.items()}
    return JsonResponse(body, status=200 if healthy else 503)


class HealthzMiddleware:
    """Answers /healthz for any Host; every other request goes on down the stack unchanged."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info == PATH:
            return healthz(request)
        return self.get_response(request)
