"""How agents authenticate: the machine's own token, which writes only that machine's data."""

from __future__ import annotations

from ninja.security import HttpBearer

from .models import AgentToken


class AgentAuth(HttpBearer):
    """An agent's own token; ``request.auth`` is the AgentToken, with its machine."""

    def authenticate(self, request, token: str) -> AgentToken | None:
        return AgentToken.authenticate(token)
