"""Weekly reports handed to e-mail or a webhook: one row per report, channel and week, so each goes
out once and a failed one is retried (dashboard/reports/scheduled.py)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class ReportDelivery(models.Model):
    class Kind(models.TextChoices):
        TEAM = "team", "Team chargeback"
        MACHINE = "machine", "Machine utilisation"

    class Channel(models.TextChoices):
        EMAIL = "email", "E-mail"
        WEBHOOK = "webhook", "Webhook"

    kind = models.CharField(max_length=8, choices=Kind.choices)
    subject = models.CharField(max_length=200)  # the team's slug or the machine's name
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    channel = models.CharField(max_length=8, choices=Channel.choices)
    target = models.TextField()  # comma-separated addresses, or the URL
    # What is sent, built once when the week ended: a retry sends the same figures.
    payload = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    next_try_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    gave_up_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-period_start", "kind", "subject", "channel"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "subject", "period_start", "channel"], name="report_delivery_once")
        ]
        indexes = [models.Index(fields=["delivered_at", "gave_up_at", "next_try_at"], name="report_delivery_due")]

    def __str__(self) -> str:
        return f"{self.kind} {self.subject} week of {self.period_start:%Y-%m-%d} by {self.channel}"
