"""JSON API for machines and telemetry: ingest from agents, inventory and series for users."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone
from ninja import Query, Router
from ninja.errors import HttpError
from pydantic import BaseModel

from dashboard.accounts.auth import USER_AUTH
from dashboard.core.periods import required_range

from . import queries, state, throughput, visibility
from .auth import AgentAuth
from .ingest import SeqExhausted, store_batch
from .payload import MAX_BIGINT, Batch, PayloadError, parse_batch

router = Router(tags=["fleet"])


class IngestReply(BaseModel):
    accepted: int  # windows stored now
    duplicates: int  # windows stored before (a replay), skipped
    last_seq: int  # the highest seq stored from this agent's spool


@router.post(
    "/ingest",
    auth=AgentAuth(),
    summary="Store a batch of samples from an agent",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": Batch.model_json_schema()}}},
        "responses": {
            "200": {
                "description": "Stored; replayed samples are counted as duplicates",
                "content": {"application/json": {"schema": IngestReply.model_json_schema()}},
            },
            "400": {"description": "Malformed batch, naming the field; nothing stored"},
            "401": {"description": "Missing, unknown or revoked token"},
            "409": {"description": "The machine's window numbering has no room for this spool; nothing stored"},
            "411": {"description": "A chunked body this server cannot read to its end: send Content-Length"},
            "413": {"description": "Body larger than INGEST_MAX_BYTES"},
        },
    },
)
def ingest(request):
    machine = request.auth.machine
    try:
        batch = parse_batch(_ingest_body(request))
        result = store_batch(machine, batch)
    except SeqExhausted as exc:
        state.record_refusal(machine.pk, timezone.now(), f"409: {exc}")
        raise HttpError(409, str(exc)) from None
    except PayloadError as exc:
        # The agent sets a refused batch aside (its dead letters) and counts it in the next one;
        # the reason is kept here so the machine's page can say why.
        state.record_refusal(machine.pk, timezone.now(), f"400: {exc}")
        raise HttpError(400, str(exc)) from None
    return result.as_dict()


def _ingest_body(request) -> bytes:
    """The batch's bytes, at most INGEST_MAX_BYTES, sent with a Content-Length or chunked."""
    limit = settings.INGEST_MAX_BYTES
    too_big = f"the limit is {limit} bytes: send fewer samples per batch"
    if request.headers.get("Content-Length"):
        try:
            length = int(request.headers["Content-Length"])
        except ValueError:
            raise HttpError(400, "Content-Length: is not a number") from None
        if length > limit:
            raise HttpError(413, f"body: the batch is {length} bytes; {too_big}")
        return request.body
    if "chunked" not in request.headers.get("Transfer-Encoding", "").lower():
        return request.body  # no body at all: parse_batch says so
    # Django reads a body only as far as Content-Length says, so a chunked one looked empty. A
    # server that decodes chunks and ends the stream with the body (gunicorn) says so with the WSGI
    # flag wsgi.input_terminated; reading one that does not (runserver) would wait forever.
    if not request.META.get("wsgi.input_terminated"):
        raise HttpError(411, "Content-Length: required by this server, which cannot read a chunked body to its end")
    body = request.META["wsgi.input"].read(limit + 1)
    if len(body) > limit:
        raise HttpError(413, f"body: the chunked batch is over {limit} bytes; {too_big}")
    return body


@router.get(
    "/machines", auth=USER_AUTH, summary="Machines by name with inventory, state and latest values, a page at a time"
)
def machines(
    request,
    offset: int = Query(0, ge=0, le=MAX_BIGINT),  # type: ignore[type-arg]
    limit: int = Query(200, ge=1, le=1000),  # type: ignore[type-arg]
):
    """`limit` is at most 1,000; `count` is the whole fleet the user's teams see, so clients know when to stop."""
    visible = visibility.visible_machines(request.user)
    return {
        "count": visible.count(),
        "offset": offset,
        "limit": limit,
        "machines": queries.fleet_overview(offset=offset, limit=limit, machines=visible),
    }


@router.get("/machines/{name}", auth=USER_AUTH, summary="One machine")
def machine(request, name: str):
    return queries.machine_detail(visibility.machine_or_404(request.user, name))


@router.get(
    "/machines/{name}/throughput",
    auth=USER_AUTH,
    summary="Tokens by kind: totals, mean/median/peak tokens/s, tokens per joule",
)
def machine_throughput(request, name: str, since: str = "24h", until: str | None = None):
    m = visibility.machine_or_404(request.user, name)
    start, end = required_range(since, until)
    return {
        "machine": m.name,
        "since": start.isoformat(),
        "until": end.isoformat(),
        "throughput": throughput.machine_summary(m, start, end),
    }


@router.get(
    "/fleet/series",
    auth=USER_AUTH,
    summary="The fleet's tokens/s: a stacked series for each of the top machines, the rest summed in one",
)
def fleet_series(
    request,
    metric: str = "tokens.generated",
    since: str = "1h",
    until: str | None = None,
    top: int = Query(throughput.FLEET_TOP, ge=1, le=1000),  # type: ignore[type-arg]
):
    """Only the machines the user's teams see (and the shared pool): another team's are left out.
    The `top` machines with the most tokens in the range get a series each (by name); the others
    are summed into one last series whose `machine` is null. `machines` counts them all."""
    if metric not in throughput.METRICS:
        raise HttpError(400, f"metric: expected one of {', '.join(sorted(throughput.METRICS))}")
    start, end = required_range(since, until)
    return throughput.fleet_series(metric, start, end, visibility.visible_machine_ids(request.user), top=top)
