"""The /api/v1/ JSON API. Errors are always {"error": "one readable sentence"}."""

from __future__ import annotations

from django.http import Http404
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from dashboard.economics.api import router as economics_router
from dashboard.fleet.api import router as fleet_router
from dashboard.jobs.api import agent_router
from dashboard.jobs.api import router as jobs_router

api = NinjaAPI(
    title="AI fleet dashboard API",
    version="1",
    urls_namespace="api",
    description="Telemetry ingest for hwprobe agents and read access for users.",
)
api.add_router("", fleet_router)
api.add_router("", jobs_router)
api.add_router("", agent_router)
api.add_router("", economics_router)


@api.exception_handler(AuthenticationError)
def unauthorized(request, exc):
    return api.create_response(
        request, {"error": "authentication required: a valid, unrevoked bearer token or a session"}, status=401
    )


@api.exception_handler(HttpError)
def http_error(request, exc: HttpError):
    return api.create_response(request, {"error": str(exc)}, status=exc.status_code)


@api.exception_handler(Http404)
def not_found(request, exc):
    return api.create_response(request, {"error": "not found"}, status=404)


@api.exception_handler(ValidationError)
def invalid(request, exc: ValidationError):
    first = exc.errors[0] if exc.errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body", "payload"))
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return api.create_response(request, {"error": f"{where}: {message}" if where else message}, status=400)
