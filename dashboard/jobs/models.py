"""Training and serving jobs, their attempts, logs, and the audit trail of who did what."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone

from dashboard.fleet.models import Machine
from dashboard.teams.models import Team, default_team_id

MAX_PARAMS_B = 10_000  # billions: well above any model yet, low enough to catch a count in units


class Job(models.Model):
    class Kind(models.TextChoices):
        TRAIN = "train", "Training"
        SERVE = "serve", "Serving"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PLACED = "placed", "Placed"
        RUNNING = "running", "Running"
        # No word from its worker: the host or the server may be away; the job may well still run.
        UNREACHABLE = "unreachable", "Unreachable"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        LOST = "lost", "Lost"

    class Precision(models.TextChoices):
        FP32 = "fp32", "fp32"
        BF16 = "bf16", "bf16"
        FP16 = "fp16", "fp16"
        FP8 = "fp8", "fp8"
        INT8 = "int8", "int8"
        INT4 = "int4", "int4"

    ACTIVE = (Status.PLACED, Status.RUNNING, Status.UNREACHABLE)
    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.LOST)

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    argv = models.JSONField(null=True, blank=True)  # the command as an argument list
    shell = models.TextField(blank=True)  # a shell string instead, only where the host allows it
    workdir = models.CharField(max_length=1024, blank=True)
    env = models.JSONField(default=dict, blank=True)
    # Names in env the submitter marked secret, besides those that look secret (jobs/masking.py).
    secret_env = models.JSONField(default=list, blank=True)
    gpus = models.PositiveSmallIntegerField(default=1)
    gpu_memory_gb = models.FloatField(default=0)  # needed per GPU
    target = models.ForeignKey(Machine, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    priority = models.IntegerField(default=0)  # higher first
    max_runtime_s = models.PositiveIntegerField(null=True, blank=True)
    preemptible = models.BooleanField(default=False)
    # Throughput: a serving engine's Prometheus endpoint the agent scrapes while the job runs,
    # and how to read tokens from the job's output (a preset name or a regular expression).
    metrics_url = models.URLField(max_length=500, blank=True)
    progress_pattern = models.CharField(max_length=500, blank=True)
    # The model the job runs, as its submitter states it; economics falls back to reading the name
    # and command ("llama-8b-int4") for whatever is left empty.
    model_params_b = models.FloatField(null=True, blank=True)  # billions of parameters
    precision = models.CharField(max_length=4, choices=Precision.choices, blank=True)  # of the weights
    context_tokens = models.PositiveIntegerField(null=True, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="jobs")
    team = models.ForeignKey(Team, on_delete=models.PROTECT, default=default_team_id, related_name="jobs")
    # Placed over its team's quota or on another team's machine: preempted when the owners need it.
    borrowing = models.BooleanField(default=False)
    # A preemptible training job placed, under the backfill policy, into GPUs a serving machine
    # left free: serving there takes them back whatever the priorities.
    backfill = models.BooleanField(default=False)

    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED, db_index=True)
    status_message = models.CharField(max_length=500, blank=True)  # why it waits, why it failed
    machine = models.ForeignKey(Machine, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    assigned_gpus = models.JSONField(default=list, blank=True)  # accelerator indexes
    attempt = models.PositiveIntegerField(default=0)
    exit_code = models.IntegerField(null=True, blank=True)
    pgid = models.IntegerField(null=True, blank=True)  # the job's process group on its machine
    log_bytes = models.BigIntegerField(default=0)  # stored log text, bounded by JOB_LOG_MAX_BYTES
    cancel_requested = models.BooleanField(default=False)
    preempt_requested = models.BooleanField(default=False)

    created_at = models.DateTimeField(default=timezone.now)
    placed_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The worker that took the current attempt (its id survives restarts: hwprobe/jobspool.py); a
    # worker that comes back without an attempt it took has lost it.
    worker_id = models.CharField(max_length=64, blank=True)
    unreachable_since = models.DateTimeField(null=True, blank=True)
    # While unreachable: when the host was first heard from again (agent or worker); if the job's
    # own worker stays silent JOB_LOST_AFTER_S past this, the job is lost.
    host_back_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-priority", "created_at"], name="job_queue_order")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(model_params_b__isnull=True)
                | models.Q(model_params_b__gt=0, model_params_b__lte=MAX_PARAMS_B),
                name="job_model_params_b_range",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name}"

    @property
    def command_display(self) -> str:
        import shlex

        return self.shell or shlex.join(self.argv or [])

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    def run_seconds(self, now: datetime | None = None) -> float | None:
        """From start to finish, or to ``now`` while it runs; None before it starts, or while
        preempted and waiting for its next attempt. Unreachable counts as running: it may well be."""
        live = (self.Status.RUNNING, self.Status.UNREACHABLE)
        if self.started_at is None or (self.finished_at is None and self.status not in live):
            return None
        return ((self.finished_at or now or timezone.now()) - self.started_at).total_seconds()

    @property
    def need(self) -> str:
        """What the job asks for, in words: "2 GPUs × 40 GiB", "1 GPU", "no GPU"."""
        return describe_need(self.gpus, self.gpu_memory_gb)


def describe_need(gpus: int, gpu_memory_gb: float) -> str:
    """GPUs and free memory per GPU in words; 0 GiB asks for no amount, so none is named."""
    if not gpus:
        return "no GPU"
    return f"{gpus} GPU{'s' if gpus != 1 else ''}" + (f" × {gpu_memory_gb:g} GiB" if gpu_memory_gb else "")


class JobAttempt(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    machine = models.ForeignKey(Machine, null=True, on_delete=models.SET_NULL, related_name="+")
    gpus = models.JSONField(default=list)
    placed_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, blank=True)  # succeeded, failed, preempted, lost...
    exit_code = models.IntegerField(null=True, blank=True)
    message = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["job", "number"]
        constraints = [models.UniqueConstraint(fields=["job", "number"], name="jobattempt_unique")]


class JobLog(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log_chunks")
    attempt = models.PositiveIntegerField()
    seq = models.PositiveIntegerField()
    stream = models.CharField(max_length=6)  # stdout or stderr
    text = models.TextField()
    ts = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "attempt", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "attempt", "seq"], name="joblog_unique")]


class IdempotencyKey(models.Model):
    """A submission's ``Idempotency-Key``: a retry with the same key and body gets the same job."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_sha256 = models.CharField(max_length=64)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotencykey_unique")]


class AuditEvent(models.Model):
    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=32)  # job.submit, job.cancel, ...
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit")
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at"]


class BackfillPolicy(models.Model):
    """Whether preemptible training may fill the GPUs serving machines leave idle ("train in the
    gaps", economics/backfill.py works out what it would earn). One row (pk 1); placement reads it
    every pass; who turned it on or off is in the audit log. The table keeps the name it was
    created under in the economics app."""

    enabled = models.BooleanField(default=False)
    changed_at = models.DateTimeField(null=True, blank=True)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        db_table = "economics_backfillpolicy"
        verbose_name_plural = "backfill policy"

    def __str__(self) -> str:
        return "backfill on" if self.enabled else "backfill off"

    @classmethod
    def current(cls) -> BackfillPolicy:
        return cls.objects.get_or_create(pk=1)[0]

    @classmethod
    def is_on(cls) -> bool:
        """Read without creating the row: placement runs often and must not write to find "off"."""
        return cls.objects.filter(pk=1, enabled=True).exists()
