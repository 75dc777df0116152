"""Machines, their agent tokens and accelerators, and the telemetry they send.

Samples are stored in typed columns, one row per machine and window (``SystemSample``) and one
per accelerator and window (``GpuSample``); the columns come from ``hwprobe.schema`` so that the
agent and the server cannot drift apart. Rollups hold the same columns per minute and per hour.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import connection, models
from django.utils import timezone

from dashboard.core import tokens
from dashboard.core.models import HashedToken
from dashboard.teams.models import Team
from hwprobe.schema import GPU_METRICS, STATS, SYSTEM_METRICS, Metric

machine_name = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    "Use letters, digits, '.', '_' and '-' (a hostname works), at most 64 characters.",
)


class MachineManager(models.Manager):
    def get_queryset(self) -> models.QuerySet:
        # Nearly every reader of machines wants their state too: one join instead of a query each.
        return super().get_queryset().select_related("state")


def _hot(name: str) -> property:
    def get(machine: Machine) -> Any:
        return getattr(machine.hot, name)

    def put(machine: Machine, value: Any) -> None:
        setattr(machine.hot, name, value)
        machine._hot_dirty = True

    return property(get, put)


class Machine(models.Model):
    class Policy(models.TextChoices):
        SHARED = "shared", "Training and serving may share"
        DEDICATED = "dedicated", "One kind of job at a time"

    name = models.CharField(max_length=64, unique=True, validators=[machine_name])
    hostname = models.CharField(max_length=255, blank=True)
    os = models.CharField(max_length=255, blank=True)
    cpu_model = models.CharField(max_length=255, blank=True)
    cpu_cores = models.PositiveIntegerField(null=True, blank=True)
    cpu_threads = models.PositiveIntegerField(null=True, blank=True)
    mem_total_bytes = models.BigIntegerField(null=True, blank=True)
    # Sequential read speed of the storage models load from, measured once by the agent; the
    # planner bounds tokens/s of a model streamed from storage with it. None: not measured.
    storage_read_bytes_per_s = models.FloatField(null=True, blank=True)
    agent_version = models.CharField(max_length=32, blank=True)
    policy = models.CharField(max_length=16, choices=Policy.choices, default=Policy.SHARED)
    # The team that owns it; empty: the shared pool every team uses within its quota.
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="machines")
    created_at = models.DateTimeField(default=timezone.now)
    # What the machine's job worker allows, as it last reported it (hwprobe.policy.Policy.summary);
    # None until a worker reports. It guides the submit form: the worker still checks every job.
    worker_policy = models.JSONField(null=True, blank=True)
    worker_seen_at = models.DateTimeField(null=True, blank=True)

    objects = MachineManager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    # What every batch changes lives in MachineState (see there); these read and write it, so
    # callers keep saying ``machine.latest``. Setting one and saving the machine saves its state.
    last_seen_at = _hot("last_seen_at")
    last_seq = _hot("last_seq")
    spool_id = _hot("spool_id")
    seq_offset = _hot("seq_offset")
    spool_dropped = _hot("spool_dropped")
    spool_refused = _hot("spool_refused")
    last_refusal_at = _hot("last_refusal_at")
    last_refusal = _hot("last_refusal")
    tokens_dropped = _hot("tokens_dropped")
    latest = _hot("latest")

    @property
    def hot(self) -> MachineState:
        """The machine's MachineState, or an unsaved blank one if it never reported."""
        try:
            return self.state
        except MachineState.DoesNotExist:
            self.state = MachineState(machine=self)
            return self.state

    def save(self, *args, **kwargs) -> None:
        super().save(*args, **kwargs)
        if getattr(self, "_hot_dirty", False):
            self.hot.save()
            self._hot_dirty = False

    def is_online(self, now: datetime | None = None) -> bool:
        if self.last_seen_at is None:
            return False
        now = now or timezone.now()
        return now - self.last_seen_at <= timedelta(seconds=settings.OFFLINE_AFTER_S)

    def issue_token(self, label: str = "") -> str:
        """Create a new agent token for this machine and return it: it is never shown again."""
        return AgentToken.mint(machine=self, label=label)


class MachineState(models.Model):
    """What every ingest batch changes about a machine, off the Machine row.

    Placement, pages and admin edits read and lock ``fleet_machine``; ingest writes this row
    alone (one upsert per batch), so it never waits for their locks and never rewrites the
    machine's inventory row. The GPU summary columns are the latest sample's devices summed, so
    the fleet page counts, sorts and totals the whole fleet without reading ``latest``.
    """

    machine = models.OneToOneField(Machine, primary_key=True, on_delete=models.CASCADE, related_name="state")
    last_seen_at = models.DateTimeField(null=True, blank=True)
    last_seq = models.BigIntegerField(default=0)
    # A reinstalled agent starts a new spool whose seqs begin at 1 again: its batches name their
    # spool, and seqs from a spool we have not seen are shifted past what is stored.
    spool_id = models.CharField(max_length=64, blank=True)
    seq_offset = models.BigIntegerField(default=0)
    # The agent's cumulative count of samples its spool had to discard (never reset by us).
    spool_dropped = models.BigIntegerField(default=0)
    # The agent's cumulative count of samples the server refused as malformed (a 4xx other than
    # 401/403/413), which it moved to its spool's dead letters so they no longer block the queue.
    spool_refused = models.BigIntegerField(default=0)
    # The server's own record of the last batch it refused for this machine: when, and why (the
    # 400/409 message the agent got). The agent's log is on the host; this is on the page.
    last_refusal_at = models.DateTimeField(null=True, blank=True)
    last_refusal = models.CharField(max_length=500, blank=True)
    # Token reports the agent's channel could not use (malformed, over capacity), summed over windows.
    tokens_dropped = models.BigIntegerField(default=0)
    # The newest sample as received (means and last values), for cards and the process table.
    latest = models.JSONField(null=True, blank=True)
    gpu_count = models.PositiveSmallIntegerField(default=0)
    gpu_util_percent = models.FloatField(null=True, blank=True)  # mean over the devices that report it
    gpu_mem_used_bytes = models.FloatField(null=True, blank=True)
    gpu_mem_total_bytes = models.FloatField(null=True, blank=True)

    def __str__(self) -> str:
        return f"state of {self.machine_id}"

    def summarised(self) -> MachineState:
        """Itself with the GPU summary columns computed from ``latest`` (before a bulk_create)."""
        for column, value in gpu_summary(self.latest).items():
            setattr(self, column, value)
        return self

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.summarised()  # the summary follows ``latest`` however it is written
        super().save(*args, **kwargs)


def gpu_summary(latest: dict[str, Any] | None) -> dict[str, Any]:
    """The latest sample's GPUs summed: count, mean utilisation, memory used and total (None: unknown)."""
    gpus = (latest or {}).get("gpus") or []

    def values(key: str) -> list[float]:
        return [g[key] for g in gpus if isinstance(g.get(key), int | float)]

    util, used, total = values("util_percent"), values("mem_used_bytes"), values("mem_total_bytes")
    return {
        "gpu_count": len(gpus),
        "gpu_util_percent": sum(util) / len(util) if util else None,
        "gpu_mem_used_bytes": float(sum(used)) if used else None,
        "gpu_mem_total_bytes": float(sum(total)) if total else None,
    }


class AgentToken(HashedToken):
    """A machine's agent token (``hwa_…``): it writes only that machine's data."""

    KIND = "hwa"

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="tokens")
    label = models.CharField(max_length=100, blank=True)

    def __str__(self) -> str:
        return f"hwa_{self.prefix}_… ({self.machine})"

    @classmethod
    def authenticate(cls, token: str) -> AgentToken | None:
        """The active token ``token`` names, with its machine and the machine's state, or None."""
        prefix = tokens.split(token, cls.KIND)
        if prefix is None:
            return None
        found = _agent_lookup().find(prefix)
        if found is None or not tokens.matches(token, found.digest):
            return None
        found.touch()
        return found


class _AgentLookup:
    """Token, machine and state in one hand-written query, built into model instances.

    Every agent batch authenticates. The same lookup through the ORM (``select_related`` of two
    joins with deferred fields) spent about 1.1 ms compiling the query and building the objects
    for a query PostgreSQL answers in 0.15 ms: a tenth of a 10-window batch's whole request
    (bench/README.md, issue 13). The instances are what ``select_related`` would give, with the
    machine's ``worker_policy`` and the state's ``latest`` deferred (ingest never reads them).
    """

    def __init__(self) -> None:
        qn = connection.ops.quote_name
        self.parts = [
            (AgentToken, [f for f in AgentToken._meta.concrete_fields]),
            (Machine, [f for f in Machine._meta.concrete_fields if f.name != "worker_policy"]),
            (MachineState, [f for f in MachineState._meta.concrete_fields if f.name != "latest"]),
        ]
        aliases = ("t", "m", "s")
        columns = ", ".join(
            f"{alias}.{qn(f.column)}" for alias, (_, fields) in zip(aliases, self.parts, strict=True) for f in fields
        )
        self.sql = (
            f"SELECT {columns} FROM {qn(AgentToken._meta.db_table)} t "
            f"JOIN {qn(Machine._meta.db_table)} m ON m.id = t.machine_id "
            f"LEFT JOIN {qn(MachineState._meta.db_table)} s ON s.machine_id = m.id "
            "WHERE t.prefix = %s AND t.revoked_at IS NULL"
        )
        # The conversions the ORM applies to each column (SQLite's datetimes arrive as text).
        self.converters = []
        for _, fields in self.parts:
            for f in fields:
                col = f.get_col(f.model._meta.db_table)
                self.converters.append((col, connection.ops.get_db_converters(col) + col.get_db_converters(connection)))

    def find(self, prefix: str) -> AgentToken | None:
        with connection.cursor() as cursor:
            cursor.execute(self.sql, [prefix])
            row = cursor.fetchone()
        if row is None:
            return None
        values = []
        for value, (col, converters) in zip(row, self.converters, strict=True):
            for convert in converters:
                value = convert(value, col, connection)
            values.append(value)
        objects = []
        start = 0
        for model, fields in self.parts:
            chunk = values[start : start + len(fields)]
            start += len(fields)
            objects.append(model.from_db(connection.alias, [f.attname for f in fields], chunk))
        token, machine, state = objects
        token.machine = machine
        if state.pk is None:  # never reported: no state row (the LEFT JOIN's NULLs)
            state = None
        else:
            MachineState._meta.get_field("machine").set_cached_value(state, machine)
        MachineState._meta.get_field("machine").remote_field.set_cached_value(machine, state)
        return token


_lookup: _AgentLookup | None = None


def _agent_lookup() -> _AgentLookup:
    global _lookup
    if _lookup is None:
        _lookup = _AgentLookup()
    return _lookup


class Accelerator(models.Model):
    """One device as the agent enumerates it: a GPU, a MIG device, or Apple's integrated GPU."""

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="accelerators")
    index = models.PositiveSmallIntegerField()
    vendor = models.CharField(max_length=32)
    name = models.CharField(max_length=255)
    uuid = models.CharField(max_length=128, blank=True)
    mem_total_bytes = models.BigIntegerField(null=True, blank=True)
    power_limit_watts = models.FloatField(null=True, blank=True)
    parent_uuid = models.CharField(max_length=128, blank=True)
    mig_profile = models.CharField(max_length=64, blank=True)
    # A MIG device's GPU instance (whose memory its compute instances share) and compute instance.
    gpu_instance_id = models.PositiveIntegerField(null=True, blank=True)
    compute_instance_id = models.PositiveIntegerField(null=True, blank=True)
    gpm_supported = models.BooleanField(null=True, blank=True)  # NVML GPM metrics; None: the agent could not tell
    driver = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["machine", "index"]
        constraints = [models.UniqueConstraint(fields=["machine", "index"], name="accelerator_unique_index")]

    def __str__(self) -> str:
        return f"{self.machine} #{self.index} {self.name}"


def metric_columns(metric: Metric) -> list[str]:
    """The column names that hold one metric: ``x_min, x_mean, x_max`` or just ``x``."""
    if metric.kind == "gauge":
        return [f"{metric.name}_{stat}" for stat in STATS]
    return [metric.name]


def _metric_fields(metrics: tuple[Metric, ...]) -> dict[str, models.Field]:
    fields: dict[str, models.Field] = {}
    for metric in metrics:
        for column in metric_columns(metric):
            fields[column] = models.BigIntegerField(null=True) if metric.integer else models.FloatField(null=True)
    return fields


def _abstract(name: str, metrics: tuple[Metric, ...]) -> type[models.Model]:
    # One abstract base per metric list, so raw samples and rollups share their columns.
    attrs: dict = {"__module__": __name__, "Meta": type("Meta", (), {"abstract": True})}
    attrs.update(_metric_fields(metrics))
    return type(name, (models.Model,), attrs)


SystemMetrics = _abstract("SystemMetrics", SYSTEM_METRICS)
GpuMetrics = _abstract("GpuMetrics", GPU_METRICS)


# Gauges whose rollups also keep a 95th percentile of the raw window means (``<name>_p95``):
# the ones a report ranks or bills on, where a mean hides the peaks.
SYSTEM_P95 = ("cpu_percent",)
GPU_P95 = ("util_percent", "power_watts", "temp_c")


# The raw tables are partitioned by day of ``ts`` on PostgreSQL (partitions.py), and a partitioned
# table's unique keys must hold its partition key: hence ``ts`` in each. A replayed window keeps its
# seq and its stamp, so it still collides with itself.


class SystemSample(SystemMetrics):
    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="+")
    seq = models.BigIntegerField()
    ts = models.DateTimeField()  # end of the window
    interval_s = models.FloatField()
    count = models.PositiveIntegerField()  # 1 s snapshots in the window
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["machine", "seq", "ts"], name="systemsample_unique_seq")]
        indexes = [
            models.Index(fields=["machine", "ts"], name="systemsample_machine_ts"),
            models.Index(fields=["received_at"], name="systemsample_received"),
        ]


class GpuSample(GpuMetrics):
    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="+")
    seq = models.BigIntegerField()
    gpu_index = models.PositiveSmallIntegerField()
    ts = models.DateTimeField()
    interval_s = models.FloatField()
    count = models.PositiveIntegerField()
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["machine", "seq", "gpu_index", "ts"], name="gpusample_unique_seq")
        ]
        indexes = [
            models.Index(fields=["machine", "ts"], name="gpusample_machine_ts"),
            models.Index(fields=["received_at"], name="gpusample_received"),
        ]


class SystemRollup(SystemMetrics):
    """Min of mins, mean of means, max of maxes over a minute or an hour, and p95 of window means."""

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="+")
    resolution_s = models.PositiveIntegerField()  # 60 or 3600
    bucket = models.DateTimeField()  # start of the minute or hour, UTC
    count = models.PositiveIntegerField()
    cpu_percent_p95 = models.FloatField(null=True)
    # The mean over the machine's GPUs of their util_percent_mean in this bucket (rollup.gpu_means,
    # written with the GPU rollups); null without GPU rollups. The fleet page's sparklines read it.
    gpu_util_percent_mean = models.FloatField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["machine", "resolution_s", "bucket"], name="systemrollup_unique")
        ]
        # Fleet-wide reads of a range (utilisation charts, efficiency ranking, hour closing,
        # retention): without it each was a scan of every bucket kept (fleet migration 0017).
        indexes = [models.Index(fields=["resolution_s", "bucket"], name="systemrollup_bucket")]


class GpuRollup(GpuMetrics):
    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="+")
    gpu_index = models.PositiveSmallIntegerField()
    resolution_s = models.PositiveIntegerField()
    bucket = models.DateTimeField()
    count = models.PositiveIntegerField()
    util_percent_p95 = models.FloatField(null=True)
    power_watts_p95 = models.FloatField(null=True)
    temp_c_p95 = models.FloatField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["machine", "resolution_s", "bucket", "gpu_index"], name="gpurollup_unique")
        ]
        indexes = [models.Index(fields=["resolution_s", "bucket"], name="gpurollup_bucket")]  # as SystemRollup's


class RollupState(models.Model):
    """How far rollups have caught up: raw rows received before ``watermark`` are rolled up."""

    name = models.CharField(max_length=32, primary_key=True)
    watermark = models.DateTimeField()


class ThroughputSample(models.Model):
    """Tokens produced on a machine in one agent window, by job and by source.

    Rows arrive inside the agent's windows, so ``(machine, seq, job_key, source)`` makes a
    replayed batch harmless like the other samples. Rates are counts over ``interval_s``.
    """

    class Source(models.TextChoices):
        PROGRESS = "progress", "Job output"
        PROMETHEUS = "prometheus", "Serving engine metrics"
        OLLAMA = "ollama", "Ollama API"
        REPORT = "report", "hwprobe.report API"

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="+")
    seq = models.BigIntegerField()
    # The job id the agent reported (0: outside any job). Telemetry sits below jobs and keeps no
    # link to them: the jobs app counts a row for a job only if one of the job's attempts ran on
    # this machine, so a machine's token cannot credit tokens to another machine's job.
    job_key = models.BigIntegerField(default=0)  # 0, not NULL: NULLs never collide in a unique index
    source = models.CharField(max_length=16, choices=Source.choices)
    ts = models.DateTimeField()  # end of the window
    interval_s = models.FloatField()
    prompt_tokens = models.BigIntegerField(default=0)
    generated_tokens = models.BigIntegerField(default=0)
    train_tokens = models.BigIntegerField(default=0)
    # Seconds of the window the source was producing (null: an older agent; the window counts whole).
    active_s = models.FloatField(null=True)
    # The counts at the resolution they were measured: [[end_ts, active_s, prompt, generated, train]].
    points = models.JSONField(null=True)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["machine", "seq", "job_key", "source", "ts"], name="throughput_unique")
        ]
        indexes = [
            models.Index(fields=["machine", "ts"], name="throughput_machine_ts"),
            models.Index(fields=["job_key", "ts"], name="throughput_job_key_ts"),
        ]


class ThroughputRollup(models.Model):
    """Tokens per machine, job and minute or hour, each window once with the count of the source
    that counted most (``throughput.window_tokens``' rule): what token charts read past a few hours.

    Written by ingest in the transaction that stores the windows, adding each new window's counts:
    all of a window's sources arrive in its one sample, and a replayed window is skipped before it
    gets here, so the sums are exact without recomputing buckets. Migration 0016 filled them from
    the rows stored before."""

    RESOLUTIONS = (60, 3600)  # minutes and hours, as the gauge rollups

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="+")
    job_key = models.BigIntegerField(default=0)  # as ThroughputSample.job_key: the agent's job id, 0 outside jobs
    resolution_s = models.PositiveIntegerField()
    bucket = models.DateTimeField()
    prompt_tokens = models.BigIntegerField(default=0)
    generated_tokens = models.BigIntegerField(default=0)
    train_tokens = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["machine", "resolution_s", "bucket", "job_key"], name="throughputrollup_unique"
            )
        ]
        indexes = [
            # The fleet's chart: every machine's buckets of a range; a job's chart: its buckets.
            models.Index(fields=["resolution_s", "bucket"], name="throughputrollup_bucket"),
            models.Index(fields=["job_key", "resolution_s", "bucket"], name="throughputrollup_job"),
        ]
