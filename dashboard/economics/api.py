"""JSON API for RoI, capacity, assemblies and share-or-split. Errors are {"error": "..."}."""

from __future__ import annotations

from ninja import Router
from ninja.errors import HttpError

from dashboard.accounts.auth import USER_AUTH
from dashboard.core.periods import parse_range
from dashboard.fleet import visibility

from . import assemblies, capacity, roi, share

router = Router(tags=["economics"])


def _idle(value: float) -> float:
    if not 0 <= value <= 100:
        raise HttpError(400, "idle_below_percent: must be between 0 and 100")
    return value


@router.get("/machines/{name}/roi", auth=USER_AUTH, summary="Energy, cost, value, RoI and payback of one machine")
def machine_roi(
    request,
    name: str,
    since: str | None = None,
    until: str | None = None,
    idle_below_percent: float = roi.DEFAULT_IDLE_BELOW_PERCENT,
):
    """`since`/`until`: a duration back from now (`7d`) or an ISO 8601 time; default: since it went
    into service. Hours whose mean accelerator utilisation is below `idle_below_percent` are idle."""
    m = visibility.machine_or_404(request.user, name)
    start, end = parse_range(since, until)
    return roi.machine_roi(m, since=start, until=end, idle_below_percent=_idle(idle_below_percent))


@router.get("/machines/{name}/capacity", auth=USER_AUTH, summary="Which model sizes one machine can serve and train")
def machine_capacity(
    request, name: str, context_tokens: int = capacity.DEFAULT_CONTEXT_TOKENS, batch: int = capacity.DEFAULT_BATCH
):
    m = visibility.machine_or_404(request.user, name)
    if not 1 <= context_tokens <= 1_048_576:
        raise HttpError(400, "context_tokens: must be between 1 and 1048576")
    if not 1 <= batch <= 4096:
        raise HttpError(400, "batch: must be between 1 and 4096")
    return capacity.machine_capacity(m, context_tokens, batch)


@router.get("/machines/{name}/share", auth=USER_AUTH, summary="Share or split: training and serving alone and together")
def machine_share(request, name: str, since: str | None = None, until: str | None = None):
    m = visibility.machine_or_404(request.user, name)
    start, end = parse_range(since, until)
    return share.share_or_split(m, since=start, until=end)


@router.get("/assemblies", auth=USER_AUTH, summary="Assemblies compared on measured throughput, energy and money")
def assembly_comparison(
    request,
    since: str | None = None,
    until: str | None = None,
    idle_below_percent: float = roi.DEFAULT_IDLE_BELOW_PERCENT,
):
    """Only the machines the user's teams see (and the shared pool) are grouped and counted."""
    start, end = parse_range(since, until)
    return assemblies.comparison(
        since=start,
        until=end,
        idle_below_percent=_idle(idle_below_percent),
        machine_ids=visibility.visible_machine_ids(request.user),
    )
