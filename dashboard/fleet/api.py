"""JSON API for machines and telemetry: ingest from agents, inventory and series for users."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Router
from ninja.errors import HttpError
from ninja.security import HttpBearer

from dashboard.accounts.auth import USER_AUTH

from . import queries, series, throughput
from .ingest import store_batch
from .models import AgentToken, Machine
from .payload import Batch, PayloadError, parse_batch

router = Router(tags=["fleet"])


class AgentAuth(HttpBearer):
    """An agent's own token; it can write only its own machine's data."""

    def authenticate(self, request, token: str) -> AgentToken | None:
        found = AgentToken.authenticate(token)
        if found is not None:
            now = timezone.now()
            # One write a minute at most: every batch authenticates.
            if found.last_used_at is None or now - found.last_used_at > timedelta(seconds=60):
                AgentToken.objects.filter(pk=found.pk).update(last_used_at=now)
        return found


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
    """`limit` is at most 1,000; `count` is the whole fleet, so clients know when to stop."""
    if offset < 0 or not 1 <= limit <= 1000:
        raise HttpError(400, "limit: must be between 1 and 1000, and offset not negative")
    return {
        "count": Machine.objects.count(),
        "offset": offset,
        "limit": limit,
        "machines": queries.fleet_overview(offset=offset, limit=limit),
    }


@router.get("/machines/{name}", auth=USER_AUTH, summary="One machine")
def machine(request, name: str):
    return queries.machine_detail(get_object_or_404(Machine, name=name))


@router.get("/machines/{name}/series", auth=USER_AUTH, summary="A downsampled series of one metric")
def machine_series(request, name: str, metric: str, since: str = "1h", until: str | None = None):
    """`since`/`until` take a duration back from now (`30m`, `1h`, `24h`, `7d`) or an ISO 8601 time."""
    m = get_object_or_404(Machine, name=name)
    start, end = time_range(since, until)
    if metric in throughput.METRICS:
        return throughput.machine_series(m, metric, start, end)
    try:
        return series.machine_series(m, metric, start, end)
    except series.SeriesError as exc:
        raise HttpError(400, str(exc))


def time_range(since: str, until: str | None):
    """Every time-ranged endpoint reads `since`/`until` the same way (see series.parse_time)."""
    now = timezone.now()
    try:
        start = series.parse_time(since, now, "since")
        end = series.parse_time(until, now, "until") if until else now
    except series.SeriesError as exc:
        raise HttpError(400, str(exc))
    if end <= start:
        raise HttpError(400, "since: must be before until")
    return start, end


@router.get(
    "/machines/{name}/throughput",
    auth=USER_AUTH,
    summary="Tokens by kind: totals, mean/median/peak tokens/s, tokens per joule",
)
def machine_throughput(request, name: str, since: str = "24h", until: str | None = None):
    m = get_object_or_404(Machine, name=name)
    start, end = time_range(since, until)
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
    start, end = time_range(since, until)
    return throughput.fleet_series(metric, start, end)
