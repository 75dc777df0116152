"""POST /api/v1/plan: the planner's figures for a workload, as the planner page shows them."""

from __future__ import annotations

from ninja import Router

from dashboard.accounts.auth import USER_AUTH
from dashboard.fleet import visibility

from .plan_views import compute
from .planner import Workload

router = Router(tags=["economics"])


@router.post("/plan", auth=USER_AUTH, summary="Rank catalogue assemblies and fleet machines for a workload")
def plan(request, workload: Workload):
    """Any signed-in user may plan. Every throughput figure says its basis: measured on this fleet,
    roofline × an efficiency measured here, roofline × a default with its source, or a storage bound.
    The fleet is the machines the user's teams see (and the shared pool)."""
    return compute(workload, visibility.visible_machine_ids(request.user))
