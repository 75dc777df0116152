"""Every change to teams, memberships and quotas: pages, the admin, the API and SSO call these,
and each change is audited (``signals.changed``)."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from .models import Membership, Team
from .signals import changed

QUOTA_FIELDS = ("share", "gpu_quota", "gpu_hours_quota", "quota_period")


def _audit(actor: Any, action: str, **detail: Any) -> None:
    changed.send(sender=Team, actor=actor, action=action, detail=detail)


def create_team(actor: Any, slug: str, name: str, **fields: Any) -> Team:
    with transaction.atomic():
        team = Team.objects.create(slug=slug, name=name, **fields)
        _audit(actor, "team.create", team=team.slug, name=name, **{k: fields[k] for k in fields if k in QUOTA_FIELDS})
    return team


def update_team(actor: Any, team: Team, **fields: Any) -> Team:
    """Change a team's name, share, quotas or report settings; the audit says before and after."""
    before = {k: getattr(team, k) for k in fields}
    with transaction.atomic():
        for k, v in fields.items():
            setattr(team, k, v)
        team.full_clean()
        team.save()
        diff = {k: [before[k], v] for k, v in fields.items() if before[k] != v}
        if diff:
            action = "team.quota" if set(diff) & set(QUOTA_FIELDS) else "team.update"
            _audit(actor, action, team=team.slug, changes=diff)
    return team


def delete_team(actor: Any, team: Team) -> None:
    with transaction.atomic():
        _audit(actor, "team.delete", team=team.slug)
        team.delete()


def set_role(actor: Any, team: Team, user: Any, role: str, source: str = "") -> Membership:
    """Add ``user`` to ``team`` with ``role``, or change their role there."""
    if role not in Membership.Role.values:
        raise ValueError(f"role: expected one of {', '.join(Membership.Role.values)}")
    with transaction.atomic():
        membership, created = Membership.objects.get_or_create(
            user=user, team=team, defaults={"role": role, "source": source}
        )
        if created:
            _audit(actor, "team.member_add", team=team.slug, user=user.get_username(), role=role, source=source)
        elif membership.role != role or membership.source != source:
            old = membership.role
            membership.role, membership.source = role, source
            membership.save(update_fields=["role", "source"])
            if old != role:
                _audit(actor, "team.role", team=team.slug, user=user.get_username(), role=[old, role], source=source)
    return membership


def remove_member(actor: Any, membership: Membership) -> None:
    with transaction.atomic():
        _audit(
            actor,
            "team.member_remove",
            team=membership.team.slug,
            user=membership.user.get_username(),
            role=membership.role,
            source=membership.source,
        )
        membership.delete()
