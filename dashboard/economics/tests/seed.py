"""Seeded fleets for the economics tests, with numbers simple enough to work out by hand.

``priced_machine`` is two H100s in service for three whole days before ``today`` (UTC midnight):

- day 1: both GPUs at 500 W and 80 % for 24 h: 2 × 0.5 kWh × 24 = 24 kWh; a serving job
  generates 500,000 tokens an hour (139 tokens/s) = 12 M tokens;
- day 2: both at 100 W and 2 % (idle): 2 × 0.1 kWh × 24 = 4.8 kWh; a training job holds both
  GPUs for 6 h = 12 GPU-hours;
- day 3: no telemetry (the agent was off).

Its profile: 36,525 USD over 12 months (365.25 days: 100 USD a day), 0.25 USD/kWh, PUE 1.2,
608.75 USD a month fixed (20 USD a day). Value: 10 USD per million generated tokens, 2 USD per
GPU-hour of training.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model

from dashboard.economics.models import CostProfile, ValueRates
from dashboard.fleet.models import Accelerator, GpuRollup, GpuSample, Machine, ThroughputSample
from dashboard.jobs.models import Job, JobAttempt

UTC = UTC
H100 = "NVIDIA H100 80GB HBM3"
H100_BYTES = 85520809984


def today() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def hours_ago(hours: float) -> datetime:
    """A whole minute ``hours`` before now: data a relative range ("since=1d") holds at any time
    of day. Midnight minus a few hours fell out of the last 24 h late in the UTC evening."""
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=hours)


def owner():
    return get_user_model().objects.get_or_create(username="seed-owner")[0]


def machine_with(
    name: str,
    gpus: int,
    model: str = H100,
    mem_bytes: int | None = H100_BYTES,
    vendor: str = "nvidia",
    power_limit: float | None = 700.0,
    created: datetime | None = None,
) -> Machine:
    m = Machine.objects.create(
        name=name, mem_total_bytes=256 * 2**30, created_at=created or today() - timedelta(days=3)
    )
    for i in range(gpus):
        Accelerator.objects.create(
            machine=m,
            index=i,
            vendor=vendor,
            name=model,
            uuid=f"{name}-{i}",
            mem_total_bytes=mem_bytes,
            power_limit_watts=power_limit,
        )
    return m


def hours(machine: Machine, start: datetime, n: int, watts: float | None, util: float | None, gpus: int = 2) -> None:
    for h in range(n):
        for g in range(gpus):
            GpuRollup.objects.create(
                machine=machine,
                gpu_index=g,
                resolution_s=3600,
                bucket=start + timedelta(hours=h),
                count=3600,
                power_watts_mean=watts,
                util_percent_mean=util,
            )


def job(
    machine: Machine,
    name: str,
    kind: str,
    start: datetime,
    end: datetime,
    gpus: list[int],
    argv: list[str] | None = None,
) -> Job:
    j = Job.objects.create(
        name=name,
        kind=kind,
        owner=owner(),
        machine=machine,
        assigned_gpus=gpus,
        argv=argv or ["python", "-m", "hwprobe.workloads", kind],
        status="succeeded",
        started_at=start,
        finished_at=end,
    )
    JobAttempt.objects.create(
        job=j, number=1, machine=machine, gpus=gpus, started_at=start, ended_at=end, outcome="succeeded"
    )
    return j


def tokens(
    machine: Machine,
    seq: int,
    ts: datetime,
    job: Job | None = None,
    generated: int = 0,
    train: int = 0,
    source: str = "progress",
    interval_s: float = 10.0,
) -> None:
    ThroughputSample.objects.create(
        machine=machine,
        seq=seq,
        job_key=job.pk if job else 0,
        source=source,
        ts=ts,
        interval_s=interval_s,
        generated_tokens=generated,
        train_tokens=train,
    )


def gpu_window(machine: Machine, seq: int, ts: datetime, watts: float, gpus: int = 2, interval_s: float = 10.0) -> None:
    for g in range(gpus):
        GpuSample.objects.create(
            machine=machine,
            seq=seq,
            gpu_index=g,
            ts=ts,
            interval_s=interval_s,
            count=10,
            power_watts_mean=watts,
            util_percent_mean=90.0,
        )


def priced_machine(name: str = "gpu-01") -> Machine:
    day1 = today() - timedelta(days=3)
    day2 = day1 + timedelta(days=1)
    m = machine_with(name, 2, created=day1)
    hours(m, day1, 24, 500.0, 80.0)
    hours(m, day2, 24, 100.0, 2.0)
    serve = job(m, "serve llama-3.1-8b", "serve", day1, day2, [0, 1])
    for h in range(24):
        ts = day1 + timedelta(hours=h, minutes=30)
        tokens(m, h + 1, ts, serve, generated=500_000, interval_s=3600)  # 139 tokens/s
        # The engine's metrics count the same job's tokens too: counted once, the larger count.
        tokens(m, h + 1, ts, serve, generated=400_000, source="prometheus", interval_s=3600)
    job(m, "train demo", "train", day2 + timedelta(hours=6), day2 + timedelta(hours=12), [0, 1])
    CostProfile.objects.create(
        name="H100 pair",
        machine=m,
        currency="USD",
        purchase_price=Decimal("36525"),
        amortisation_months=12,
        in_service_on=day1.date(),
        electricity_price_per_kwh=Decimal("0.25"),
        pue=1.2,
        fixed_monthly=Decimal("608.75"),
    )
    ValueRates.objects.get_or_create(
        machine=None,
        defaults={"currency": "USD", "serve_per_million_generated": Decimal("10"), "train_per_gpu_hour": Decimal("2")},
    )
    return m


def shared_machine(name: str = "gpu-02") -> Machine:
    """Serving alone, then training alone, then both, 400 s each (40 windows of 10 s):
    serving 10 tok/s alone and 8.2 together, training 5 tok/s alone and 3.5 together."""
    t0 = today() - timedelta(days=1)
    m = machine_with(name, 1, created=t0 - timedelta(days=1))
    s1 = job(m, "serve alone", "serve", t0, t0 + timedelta(seconds=400), [0])
    tr = job(m, "train", "train", t0 + timedelta(seconds=400), t0 + timedelta(seconds=1200), [0])
    s2 = job(m, "serve together", "serve", t0 + timedelta(seconds=800), t0 + timedelta(seconds=1200), [0])
    for i in range(1, 121):
        ts = t0 + timedelta(seconds=10 * i)
        if i <= 40:
            tokens(m, i, ts, s1, generated=100)
        elif i <= 80:
            tokens(m, i, ts, tr, train=50)
        else:
            tokens(m, i, ts, s2, generated=82)
            tokens(m, i, ts, tr, train=35)
    return m
