"""Reading a bearer token off a request: the one place that parses ``Authorization``."""

from __future__ import annotations

from django.http import HttpRequest


def bearer_token(request: HttpRequest) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
