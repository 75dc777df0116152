"""Personal API tokens and roles.

Roles are Django groups: ``viewer`` reads, ``operator`` also submits and cancels its own jobs;
staff users are admins. A user in no group reads, like a viewer.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from dashboard import tokens

VIEWER, OPERATOR = "viewer", "operator"


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=tokens.PREFIX_LEN, unique=True)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"hwu_{self.prefix}_… ({self.user})"

    @classmethod
    def issue(cls, user, name: str = "") -> str:
        """Create a token for ``user`` and return it: it is never shown again."""
        token, prefix, digest = tokens.new_token("hwu")
        cls.objects.create(user=user, name=name, prefix=prefix, digest=digest)
        return token

    @classmethod
    def authenticate(cls, token: str):
        """The active user owning ``token``, or None."""
        prefix = tokens.split(token, "hwu")
        if prefix is None:
            return None
        found = cls.objects.select_related("user").filter(prefix=prefix, revoked_at=None).first()
        if found is None or not tokens.matches(token, found.digest) or not found.user.is_active:
            return None
        cls.objects.filter(pk=found.pk).update(last_used_at=timezone.now())
        return found.user


def is_operator(user) -> bool:
    return bool(user.is_authenticated and (user.is_staff or user.groups.filter(name=OPERATOR).exists()))
