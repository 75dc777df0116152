"""JSON API for machines and telemetry: ingest from agents, inventory and series for users."""

from __future__ import annotations

from django.conf import settings
from django.shortcuts import get_object_or_404
from ninja import Router
from ninja.errors import HttpError

from dashboard.accounts.auth import USER_AUTH
from dashboard.core.periods import required_range
from dashboard.teams import access as team_access

from . import queries, throughput
from .auth import AgentAuth
from .ingest import store_batch
from .models import Machine
from .payload import Batch, PayloadError, parse_batch

router = Router(tags=["fleet"])


@router.post(
    "/ingest",
    auth=AgentAuth(),
    summary="Store a batch of samples from an agent",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": Batch.model_json_schema()}}},
        "responses": {
            "200": {"description": "Stored; replayed samples are counted as duplicates"},
            "400": {"description": "Malformed batch; nothing stored"},
            "401": {"description": "Missing, unknown or revoked token"},
            "413": {"description": "Body larger than INGEST_MAX_BYTES"},
        },
    },
)
def ingest(request):
    try:
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        raise HttpError(400, "Content-Length is not a number")
    if length > settings.INGEST_MAX_BYTES:
        raise HttpError(
            413, f"batch is {length} bytes; the limit is {settings.INGEST_MAX_BYTES}: send fewer samples per batch"
        )
    try:
        batch = parse_batch(request.body)
    except PayloadError as exc:
        raise HttpError(400, str(exc))
    result = store_batch(request.auth.machine, batch)
    return result.as_dict()


@router.get(
    "/machines", auth=USER_AUTH, summary="Machines by name with inventory, state and latest values, a page at a time"
)
def machines(request, offset: int = 0, limit: int = 200):
    """`limit` is at most 1,000; `count` is the whole fleet the user's teams see, so clients know when to stop."""
    if offset < 0 or not 1 <= limit <= 1000:
        raise HttpError(400, "limit: must be between 1 and 1000, and offset not negative")
    visible = team_access.scope_machines(Machine.objects.all(), request.user)
    return {
        "count": visible.count(),
        "offset": offset,
        "limit": limit,
        "machines": queries.fleet_overview(offset=offset, limit=limit, machines=visible),
    }


@router.get("/machines/{name}", auth=USER_AUTH, summary="One machine")
def machine(request, name: str):
    return queries.machine_detail(
        get_object_or_404(team_access.scope_machines(Machine.objects.all(), request.user), name=name)
    )


@router.get(
    "/machines/{name}/throughput",
    auth=USER_AUTH,
    summary="Tokens by kind: totals, mean/median/peak tokens/s, tokens per joule",
)
def machine_throughput(request, name: str, since: str = "24h", until: str | None = None):
    m = get_object_or_404(team_access.scope_machines(Machine.objects.all(), request.user), name=name)
    start, end = required_range(since, until)
    return {
        "machine": m.name,
        "since": start.isoformat(),
        "until": end.isoformat(),
        "throughput": throughput.machine_summary(m, start, end),
    }


@router.get("/fleet/series", auth=USER_AUTH, summary="The fleet's tokens/s, one stacked series per machine")
def fleet_series(request, metric: str = "tokens.generated", since: str = "1h", until: str | None = None):
    if metric not in throughput.METRICS:
        raise HttpError(400, f"metric: expected one of {', '.join(sorted(throughput.METRICS))}")
    start, end = required_range(since, until)
    return throughput.fleet_series(metric, start, end)
