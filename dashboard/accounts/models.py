"""Personal API tokens and roles.

Roles are Django groups: ``viewer`` reads, ``operator`` also submits and cancels its own jobs;
staff users are admins. A user in no group reads, like a viewer.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from dashboard.core.models import HashedToken

VIEWER, OPERATOR = "viewer", "operator"


class ApiToken(HashedToken):
    """A user's personal API token (``hwu_…``): acts as that user in the API, CSV and /metrics."""

    KIND = "hwu"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)

    def __str__(self) -> str:
        return f"hwu_{self.prefix}_… ({self.user})"

    @classmethod
    def issue(cls, user, name: str = "") -> str:
        """Create a token for ``user`` and return it: it is never shown again."""
        return cls.mint(user=user, name=name)

    @classmethod
    def authenticate(cls, token: str):
        """The active user owning ``token``, or None."""
        found = cls.find(token, cls.objects.select_related("user"))
        if found is None or not found.user.is_active:
            return None
        found.touch()
        found.user.api_token = found  # which token acted: dashboard/teams/access.py honours its team scope
        return found.user


def is_operator(user) -> bool:
    return bool(user.is_authenticated and (user.is_staff or user.groups.filter(name=OPERATOR).exists()))
