"""The one token model every kind of bearer token is made of (abstract: it has no table)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar, Self

from django.db import models
from django.utils import timezone

from . import tokens

# A token used again within this long does not write its last use again: every agent batch and
# API call authenticates, and a write per request would be most of a small request's cost.
LAST_USED_RESOLUTION = timedelta(seconds=60)


class HashedToken(models.Model):
    """A bearer token stored as a lookup prefix plus a SHA-256 digest; shown once, revocable."""

    KIND: ClassVar[str]  # the token's leading word: hwa (agents), hwu (users)

    prefix = models.CharField(max_length=tokens.PREFIX_LEN, unique=True)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    @classmethod
    def mint(cls, **fields: Any) -> str:
        """Create a token with ``fields`` and return it: it is never shown again."""
        token, prefix, digest = tokens.new_token(cls.KIND)
        cls.objects.create(prefix=prefix, digest=digest, **fields)  # type: ignore[attr-defined]
        return token

    @classmethod
    def find(cls, token: str, queryset: models.QuerySet | None = None) -> Self | None:
        """The active (unrevoked) token ``token`` names, or None; ``queryset`` may add joins."""
        prefix = tokens.split(token, cls.KIND)
        if prefix is None:
            return None
        qs = queryset if queryset is not None else cls.objects.all()  # type: ignore[attr-defined]
        found = qs.filter(prefix=prefix, revoked_at=None).first()
        if found is None or not tokens.matches(token, found.digest):
            return None
        return found

    def touch(self) -> None:
        """Record a use, at most once per ``LAST_USED_RESOLUTION``."""
        now = timezone.now()
        if self.last_used_at is None or now - self.last_used_at > LAST_USED_RESOLUTION:
            type(self).objects.filter(pk=self.pk).update(last_used_at=now)  # type: ignore[attr-defined]
            self.last_used_at = now

    def revoke(self) -> None:
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])
