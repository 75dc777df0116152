"""The machine worker's side of ghost-memory cleanup, authenticated by the machine's agent token.

| call | body | answer |
| --- | --- | --- |
| `GET /api/v1/agent/cleanups` | | `{"cleanups": [{"id", "pgid", "pids", "job_id"}]}`: groups an operator confirmed |
| `POST /api/v1/agent/cleanups/ID` | `{"outcome": "done" / "refused" / "gone", "message": str}` | `{"status": ...}` |

The worker stops a group only if it ran that job there (its own record of the groups it
started); otherwise it answers ``refused``. Both calls are idempotent."""

from __future__ import annotations

from typing import Annotated, Literal

from ninja import Router
from ninja.errors import HttpError
from pydantic import BaseModel, ConfigDict, Field

from dashboard.fleet.auth import AgentAuth

from . import ghosts

agent_router = Router(tags=["agent"])


class CleanupOutcomeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: Literal["done", "refused", "gone"]
    message: Annotated[str, Field(max_length=500)] = ""


@agent_router.get("/agent/cleanups", auth=AgentAuth(), summary="Ghost-memory cleanups an operator confirmed")
def cleanups(request):
    return {"cleanups": ghosts.pending_cleanups(request.auth.machine)}


@agent_router.post("/agent/cleanups/{request_id}", auth=AgentAuth(), summary="What the worker did about a cleanup")
def cleanup_done(request, request_id: int, payload: CleanupOutcomeIn):
    try:
        done = ghosts.report_cleanup(request.auth.machine, request_id, payload.outcome, payload.message)
    except ghosts.CleanupError as exc:
        raise HttpError(exc.status, str(exc)) from None
    return {"status": done.status}
