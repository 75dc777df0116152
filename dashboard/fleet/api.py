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

from . import queries, series
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
        raise HttpError(413, f"batch is {length} bytes; the limit is {settings.INGEST_MAX_BYTES}: send fewer samples per batch")
    try:
        batch = parse_batch(request.body)
    except PayloadError as exc:
        raise HttpError(400, str(exc))
    result = store_batch(request.auth.machine, batch)
    return result.as_dict()


@router.get("/machines", auth=USER_AUTH, summary="Every machine with inventory, state and latest values")
def machines(request):
    return {"machines": queries.fleet_overview()}


@router.get("/machines/{name}", auth=USER_AUTH, summary="One machine")
def machine(request, name: str):
    return queries.machine_detail(get_object_or_404(Machine, name=name))


@router.get("/machines/{name}/series", auth=USER_AUTH, summary="A downsampled series of one metric")
def machine_series(request, name: str, metric: str, since: str = "1h", until: str | None = None):
    """`since`/`until` take a duration back from now (`30m`, `1h`, `24h`, `7d`) or an ISO 8601 time."""
    m = get_object_or_404(Machine, name=name)
    now = timezone.now()
    try:
        start = series.parse_time(since, now, "since")
        end = series.parse_time(until, now, "until") if until else now
        return series.machine_series(m, metric, start, end)
    except series.SeriesError as exc:
        raise HttpError(400, str(exc))
