"""Alert rules users set, the incidents (``Alert``) they open and close, and webhook deliveries.

An incident is identified by its rule and a ``key`` naming what it is about (``machine:3``,
``machine:3:gpu:1``, ``job:12:gpu:0``, ``job:12``): at most one alert per rule and key is open at a
time, which a partial unique constraint enforces even if two evaluations overlap.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from dashboard.fleet.models import Machine


class AlertRule(models.Model):
    class Kind(models.TextChoices):
        MACHINE_OFFLINE = "machine_offline", "Machine offline"
        GPU_TEMPERATURE = "gpu_temperature", "GPU temperature"
        GPU_IDLE_WITH_JOB = "gpu_idle_with_job", "GPU idle while a job runs"
        JOB_FAILED = "job_failed", "Job failed or lost"
        SPOOL_DROPPING = "spool_dropping", "Agent spool dropping samples"

    # What the threshold means for each kind, in the words the form and the rules table show.
    THRESHOLD_MEANING = {
        Kind.MACHINE_OFFLINE: ("min", "silent for at least this many minutes"),
        Kind.GPU_TEMPERATURE: ("°C", "temperature above this"),
        Kind.GPU_IDLE_WITH_JOB: ("min", "under 5 % utilisation for this many minutes while a job holds the GPU"),
        Kind.JOB_FAILED: ("min", "the alert stays open this many minutes (0: closes at once)"),
        Kind.SPOOL_DROPPING: ("min", "resolves after this many minutes without new drops"),
    }

    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=24, choices=Kind.choices)
    threshold = models.FloatField()
    machine = models.ForeignKey(
        Machine,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="Only this machine; empty for every machine.",
    )
    webhook_url = models.URLField(
        max_length=500,
        blank=True,
        help_text="Gets a JSON POST when an alert fires and when it resolves; empty for none.",
    )
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "pk"]

    def __str__(self) -> str:
        return self.name

    @property
    def unit(self) -> str:
        return self.THRESHOLD_MEANING[self.Kind(self.kind)][0]

    @property
    def threshold_display(self) -> str:
        value = f"{self.threshold:g}"
        return f"{value} {self.unit}"

    @property
    def is_event(self) -> bool:
        """Event rules (a job failed) fire once per thing that happened and expire; the others follow a condition."""
        return self.kind == self.Kind.JOB_FAILED


class Alert(models.Model):
    """One incident: fired when its rule's condition started holding, resolved when it stopped."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    key = models.CharField(max_length=100)
    machine = models.ForeignKey(Machine, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    gpu_index = models.PositiveSmallIntegerField(null=True, blank=True)
    job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    message = models.CharField(max_length=500)
    fired_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=200, blank=True)  # why it closed, in words
    # The last event handed to the webhook ("fired" or "resolved"), empty when the rule has none.
    last_notified = models.CharField(max_length=8, blank=True)

    class Meta:
        ordering = ["-fired_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "key"], condition=Q(resolved_at=None), name="alert_one_open_per_key"
            )
        ]
        indexes = [models.Index(fields=["resolved_at", "-fired_at"], name="alert_open_recent")]

    def __str__(self) -> str:
        return self.message

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


class WebhookDelivery(models.Model):
    """One POST to make (an alert fired or resolved), retried with exponential backoff."""

    class Event(models.TextChoices):
        FIRED = "fired", "Fired"
        RESOLVED = "resolved", "Resolved"

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=8, choices=Event.choices)
    url = models.URLField(max_length=500)  # the rule's URL when the event happened
    payload = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    next_try_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    gave_up_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [models.Index(fields=["delivered_at", "gave_up_at", "next_try_at"], name="webhook_due")]


class SpoolWatch(models.Model):
    """What a spool-dropping rule last saw of a machine: its drop count and when it last grew."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="+")
    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="+")
    dropped = models.BigIntegerField()
    increased_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "machine"], name="spoolwatch_unique")]
