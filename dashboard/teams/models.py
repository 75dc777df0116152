"""Teams: who belongs to which with what role, each team's share and quotas, and token scopes.

Machines (``fleet.Machine.team``) and jobs (``jobs.Job.team``) point here; this app is below
them and never imports them.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

DEFAULT_SLUG = "default"


def validate_zone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"{name!r} is not an IANA time zone such as Europe/Berlin") from None


class Team(models.Model):
    class Period(models.TextChoices):
        DAY = "day", "Day"
        WEEK = "week", "Week"
        MONTH = "month", "Month"

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    # The team's fair share: its weight against the other teams' (Slurm's "shares").
    share = models.FloatField(default=1.0, validators=[MinValueValidator(0.0001)])
    # Quotas; empty means no limit. GPUs are counted concurrently, GPU-hours per calendar period.
    gpu_quota = models.PositiveIntegerField(null=True, blank=True)
    gpu_hours_quota = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0)])
    quota_period = models.CharField(max_length=8, choices=Period.choices, default=Period.MONTH)
    # Where the weekly report goes: e-mail addresses (comma-separated) and/or a webhook URL.
    report_emails = models.CharField(max_length=1000, blank=True)
    report_webhook = models.URLField(max_length=500, blank=True)
    # The weekly report covers the last full Monday-to-Monday week in this IANA zone (empty: TIME_ZONE).
    time_zone = models.CharField(max_length=64, blank=True, validators=[validate_zone])
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def default_team_id() -> int:
    """The default team's id, created on first use: jobs created without a team land there."""
    # Only the id is read: migrations of other apps call this (a field default) before this app's
    # later migrations have added their columns.
    pk = Team.objects.filter(slug=DEFAULT_SLUG).values_list("pk", flat=True).first()
    if pk is None:
        pk = Team.objects.get_or_create(slug=DEFAULT_SLUG, defaults={"name": "Default"})[0].pk
    return pk


class Membership(models.Model):
    class Role(models.TextChoices):
        VIEWER = "viewer", "Viewer"  # reads the team's jobs and machines
        OPERATOR = "operator", "Operator"  # also submits jobs for the team and cancels its own
        ADMIN = "admin", "Admin"  # also manages members and cancels any of the team's jobs

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.VIEWER)
    # "oidc" when single sign-on manages it: the next login may change or remove it.
    source = models.CharField(max_length=8, blank=True)

    class Meta:
        ordering = ["team", "user"]
        constraints = [models.UniqueConstraint(fields=["user", "team"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"


class TokenScope(models.Model):
    """Limits a personal API token to some of its user's teams; a token with no scope acts for all."""

    token = models.ForeignKey("accounts.ApiToken", on_delete=models.CASCADE, related_name="team_scopes")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="token_scopes")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["token", "team"], name="tokenscope_unique")]


class SsoIdentity(models.Model):
    """The single sign-on subject (the provider's ``sub``) a user logs in as.

    Users are matched by subject, never by e-mail: whoever controls an address at the provider must
    not take over a local account that happens to use it."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identity")
    subject = models.CharField(max_length=255, unique=True)
    last_login_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.user} ({self.subject})"
