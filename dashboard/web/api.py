"""The /api/v1/ JSON API, assembled from each app's router. Errors are always
{"error": "one readable sentence"}.

The one endpoint defined here composes two layers: a machine's series labels token series with
the names of the jobs that ran there, which telemetry (``fleet``) does not know.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from ninja import NinjaAPI, Router, Swagger
from ninja.errors import AuthenticationError, HttpError, ValidationError

from dashboard.accounts.auth import USER_AUTH, rate_limited_response
from dashboard.accounts.ratelimit import RateLimited
from dashboard.core import openapi
from dashboard.core.periods import PeriodError, required_range
from dashboard.core.validation import StorableTextParser, UnstorableText
from dashboard.economics.api import router as economics_router
from dashboard.fleet import series, throughput, visibility
from dashboard.fleet.api import router as fleet_router
from dashboard.jobs import throughput as job_throughput
from dashboard.jobs.api import agent_router
from dashboard.jobs.api import router as jobs_router

from . import fleet_history


class Api(NinjaAPI):
    def get_openapi_schema(self, *args: Any, **kwargs: Any) -> Any:
        # The error answers every route shares, and hand-written schemas' $defs (dashboard/core/openapi.py).
        return openapi.complete(super().get_openapi_schema(*args, **kwargs))


class LocalSwagger(Swagger):
    """Swagger UI from this server's static files (static/vendor), inside the site's own page:
    django-ninja's page loads it from a CDN unless ninja is an installed app, and has no navigation."""

    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs: Any) -> HttpResponse:
        settings = {**self.settings, "url": self.get_openapi_url(api, kwargs)}
        return render(request, "api/docs.html", {"swagger_settings": settings, "api": api})


api = Api(
    docs=LocalSwagger(),
    title="AI fleet dashboard API",
    version="1",
    urls_namespace="api",
    parser=StorableTextParser(),  # a NUL in any body field: 400 naming it (dashboard/core/validation.py)
    description="Telemetry ingest for hwprobe agents and read access for users.",
)
composed = Router(tags=["fleet"])


@composed.get("/machines/{name}/series", auth=USER_AUTH, summary="A downsampled series of one metric")
def machine_series(request, name: str, metric: str, since: str = "1h", until: str | None = None):
    """`since`/`until` take a duration back from now (`30m`, `1h`, `24h`, `7d`) or an ISO 8601 time."""
    m = visibility.machine_or_404(request.user, name)
    start, end = required_range(since, until)
    if metric in throughput.METRICS:
        return throughput.machine_series(m, metric, start, end, job_throughput.names_on(m))
    try:
        return series.machine_series(m, metric, start, end)
    except series.SeriesError as exc:
        raise HttpError(400, str(exc)) from None


@composed.get("/fleet/history", auth=USER_AUTH, summary="The fleet over time: utilisation, cost, value and RoI")
def fleet_history_api(request, since: str = "24h", until: str | None = None):
    """Utilisation per step (mean and p95 across GPUs, or CPUs in a fleet without GPUs) over the range;
    cost, value and RoI per day over the range or the last 7 days, whichever is longer. Only the
    machines the user's teams see (and the shared pool) count."""
    start, end = required_range(since, until)
    return fleet_history.history(start, end, visibility.visible_machine_ids(request.user), (since, until))


api.add_router("", fleet_router)
api.add_router("", composed)
api.add_router("", jobs_router)
api.add_router("", agent_router)
api.add_router("", "dashboard.alerts.api.agent_router")  # ghost-memory cleanups for workers
api.add_router("", economics_router)
api.add_router("", "dashboard.economics.plan_api.router")
api.add_router("", "dashboard.reports.api.router")


@api.exception_handler(AuthenticationError)
def unauthorized(request, exc):
    return api.create_response(
        request, {"error": "authentication required: a valid, unrevoked bearer token or a session"}, status=401
    )


@api.exception_handler(RateLimited)
def too_many(request, exc: RateLimited):
    return rate_limited_response(exc)


@api.exception_handler(HttpError)
def http_error(request, exc: HttpError):
    message = str(exc)
    if isinstance(exc.__cause__, UnstorableText):  # the parser's own sentence, naming the field
        message = str(exc.__cause__)
    elif isinstance(exc.__cause__, json.JSONDecodeError):
        message = f"body: is not valid JSON ({exc.__cause__})"
    return api.create_response(request, {"error": message}, status=exc.status_code)


@api.exception_handler(PeriodError)
def bad_period(request, exc: PeriodError):
    return api.create_response(request, {"error": str(exc)}, status=400)


@api.exception_handler(Http404)
def not_found(request, exc):
    return api.create_response(request, {"error": "not found"}, status=404)


@api.exception_handler(ValidationError)
def invalid(request, exc: ValidationError):
    first = exc.errors[0] if exc.errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body", "payload"))
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return api.create_response(request, {"error": f"{where}: {message}" if where else message}, status=400)
