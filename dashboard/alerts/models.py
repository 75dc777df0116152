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
        SPOOL_DROPPING = "spool_dropping", "Agent losing samples (spool full, or refused)"
        # GPU health, created enabled on a fresh install (migration 0003_default_health_rules).
        GPU_XID = "gpu_xid", "GPU XID error"
        GPU_ECC_UNCORRECTABLE = "gpu_ecc_uncorrectable", "Uncorrectable ECC errors"
        GPU_MEMORY_REMAP = "gpu_memory_remap", "Retired pages or row remapping pending or failed"
        GPU_THROTTLE = "gpu_throttle", "Sustained thermal or power-brake throttling"
        GPU_MISSING = "gpu_missing", "GPU no longer listed by NVML"
        GPU_NVML_ERRORS = "gpu_nvml_errors", "NVML errors reading a GPU"
        GHOST_MEMORY = "ghost_memory", "GPU memory held outside any job"
        # Off by default: it may stop jobs.
        JOB_ALLOCATED_IDLE = "job_allocated_idle", "Job holds GPUs it barely uses"

    # What the threshold means for each kind, in the words the form and the rules table show.
    THRESHOLD_MEANING = {
        Kind.MACHINE_OFFLINE: ("min", "silent for at least this many minutes"),
        Kind.GPU_TEMPERATURE: ("°C", "temperature above this"),
        Kind.GPU_IDLE_WITH_JOB: ("min", "under 5 % utilisation for this many minutes while a job holds the GPU"),
        Kind.JOB_FAILED: ("min", "the alert stays open this many minutes (0: closes at once)"),
        Kind.SPOOL_DROPPING: ("min", "resolves after this many minutes without samples dropped or refused"),
        Kind.GPU_XID: ("min", "resolves after this many minutes without a new XID"),
        Kind.GPU_ECC_UNCORRECTABLE: (
            "errors",
            "more volatile uncorrectable ECC errors than this since the driver loaded",
        ),
        Kind.GPU_MEMORY_REMAP: (
            "pages",
            "a remap or retirement pending or failed, or at least this many retired pages",
        ),
        Kind.GPU_THROTTLE: ("min", "clocks held down by heat or the power brake half the time or more for this long"),
        Kind.GPU_MISSING: ("min", "a GPU the machine had is gone from NVML (or lost) for this long"),
        Kind.GPU_NVML_ERRORS: ("min", "resolves after this many minutes without a new NVML error"),
        Kind.GHOST_MEMORY: ("min", "memory held by a dead process, a finished job or an unknown process this long"),
        Kind.JOB_ALLOCATED_IDLE: ("min", "a running job's GPUs under the level's SM activity for this long"),
    }
    # One line each: what an operator does about it (shown with the alert and in its webhook).
    ADVICE = {
        Kind.MACHINE_OFFLINE: "Check the host is up and `hwprobe run` is running (systemctl status hwprobe).",
        Kind.GPU_TEMPERATURE: "Check fans, airflow and inlet temperature; lower the power limit if it persists.",
        Kind.GPU_IDLE_WITH_JOB: "Ask the job's owner whether it is stuck; cancel it to free the GPU.",
        Kind.JOB_FAILED: "Read the job's log on its page; resubmit once the cause is fixed.",
        Kind.SPOOL_DROPPING: (
            "Dropped: the agent cannot reach the server (check the network and ingest). Refused: the "
            "machine page says why; `hwprobe dead-letters` on the host lists the samples set aside."
        ),
        Kind.GPU_XID: "Do what the XID's meaning says; for hardware XIDs drain the GPU and reset it (nvidia-smi -r).",
        Kind.GPU_ECC_UNCORRECTABLE: "Drain the GPU and reset it; if errors return after the reset, open an RMA.",
        Kind.GPU_MEMORY_REMAP: "Drain and reset the GPU to apply the remap; a failed remap or many retired pages: RMA.",
        Kind.GPU_THROTTLE: "Check cooling and the power supply (the power brake is an external signal).",
        Kind.GPU_MISSING: "Run nvidia-smi on the host; a GPU that fell off the bus needs a reboot or reseat.",
        Kind.GPU_NVML_ERRORS: "Run nvidia-smi -q on the host; lasting errors often precede an XID 79: drain it.",
        Kind.GHOST_MEMORY: "Confirm the cleanup of an ended job's processes on the alerts page; check others by hand.",
        Kind.JOB_ALLOCATED_IDLE: "Ask the owner to release the GPUs or fix the input pipeline; the rule may stop it.",
    }

    class Action(models.TextChoices):
        WARN = "warn", "Warn only (webhook)"
        STOP = "stop", "Warn, then preempt a preemptible job or cancel it after as long again"

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
    # Kind-specific settings; the form shows each where its kind uses it.
    level = models.FloatField(
        null=True, blank=True, help_text="Job holds idle GPUs: SM activity under this % (NVML utilisation without GPM)."
    )
    action = models.CharField(max_length=8, choices=Action.choices, default=Action.WARN, blank=True)
    allowed_processes = models.CharField(
        max_length=500,
        blank=True,
        help_text="GPU memory outside jobs: process names allowed to hold it (comma-separated), e.g. ollama, vllm.",
    )
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
    def advice(self) -> str:
        return self.ADVICE.get(self.Kind(self.kind), "")

    @property
    def allowed_names(self) -> set[str]:
        return {n.strip() for n in self.allowed_processes.split(",") if n.strip()}

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
    """What a spool-dropping rule last saw of a machine: its drop and refusal counts and when one last grew."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="+")
    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="+")
    dropped = models.BigIntegerField()
    refused = models.BigIntegerField(default=0)
    increased_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "machine"], name="spoolwatch_unique")]


class GpuWatch(models.Model):
    """What a counter rule (XIDs, NVML errors) last saw of one GPU: the count and when it last grew."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="+")
    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="+")
    gpu_index = models.PositiveSmallIntegerField()
    value = models.BigIntegerField(default=0)
    increased_at = models.DateTimeField(null=True, blank=True)
    detail = models.BigIntegerField(null=True, blank=True)  # the code that came with the increase

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "machine", "gpu_index"], name="gpuwatch_unique")]


class KnownGpu(models.Model):
    """A physical GPU a machine has reported, so that one NVML stops listing is noticed."""

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="+")
    uuid = models.CharField(max_length=128)
    name = models.CharField(max_length=255, blank=True)
    index = models.PositiveSmallIntegerField(null=True, blank=True)  # where it was last listed
    last_listed_at = models.DateTimeField()  # to within health.LISTED_RESOLUTION (5 min)
    missing_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["machine", "uuid"], name="knowngpu_unique")]

    def __str__(self) -> str:
        return f"{self.machine} {self.name} {self.uuid}"


class GhostProcess(models.Model):
    """A process holding GPU memory outside any running job, from when the rule first saw it."""

    class Reason(models.TextChoices):
        GONE = "gone", "no longer in the host's process table"
        ORPHANED = "orphaned", "left behind by a job that ended"
        UNKNOWN = "unknown", "belongs to no job and no allowed service"

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="+")
    pid = models.PositiveIntegerField()
    pgid = models.PositiveIntegerField(null=True, blank=True)
    name = models.CharField(max_length=255, blank=True)
    user = models.CharField(max_length=255, blank=True)
    gpus = models.JSONField(default=list)  # device indexes it holds memory on
    mem_used_bytes = models.BigIntegerField(null=True, blank=True)
    reason = models.CharField(max_length=8, choices=Reason.choices)
    job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    first_seen_at = models.DateTimeField()
    # The last evaluation that saw it, to within ghosts.SEEN_RESOLUTION (5 min).
    last_seen_at = models.DateTimeField()

    class Meta:
        ordering = ["machine", "pid"]
        constraints = [models.UniqueConstraint(fields=["machine", "pid"], name="ghostprocess_unique")]


class CleanupRequest(models.Model):
    """An operator's go-ahead for a machine's worker to stop an ended job's process group.

    The worker fetches open requests (``GET /api/v1/agent/cleanups``), stops the group only if it
    ran that job there (its policy), and reports what it did; every step is in the audit log."""

    class Status(models.TextChoices):
        CONFIRMED = "confirmed", "Confirmed, waiting for the worker"
        DONE = "done", "Stopped by the worker"
        REFUSED = "refused", "Refused by the worker"
        GONE = "gone", "Already gone"

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey("jobs.Job", null=True, on_delete=models.SET_NULL, related_name="+")
    pgid = models.PositiveIntegerField()
    pids = models.JSONField(default=list)
    mem_used_bytes = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.CONFIRMED)
    confirmed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    confirmed_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    message = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-confirmed_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["machine", "pgid"], condition=Q(status="confirmed"), name="cleanup_one_open_per_group"
            )
        ]


class IdleAction(models.Model):
    """What an allocated-but-idle rule did to a job (warned, asked to preempt or cancel), once each."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="+")
    action = models.CharField(max_length=8)  # warned, preempt, cancel
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "job", "action"], name="idleaction_unique")]
