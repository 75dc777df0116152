"""A machine's two days with figures simple enough to work out by hand.

``gpu-01``: two H100s, in service from ``day1`` (UTC midnight). Telemetry arrives as one window an
hour (interval 3600 s, ending at half past), so every figure is a sum over 24 rows per device.

Day 2 (the "current" day in the tests):
- GPU 0 ramps: in hour h, utilisation 4·h % (0, 4, ... 92) and power 100 + 20·h W (100 ... 560).
  Mean utilisation 4 × 11.5 = 46 %; p95: rank 0.95 × 23 = 21.85 between 84 and 88 -> 87.4 %;
  busy (>= 10 %) from h = 3 on: 21 h, idle 3 h. Mean power 100 + 20 × 11.5 = 330 W,
  p95 power 100 + 20 × 21.85 = 537 W; energy 330 W × 24 h = 7.92 kWh.
- GPU 1: 40 % and 300 W all day: mean and p95 40 %, busy 24 h, energy 7.2 kWh.
- CPU: 50 % for hours 0-5, 5 % after: mean (6 × 50 + 18 × 5) / 24 = 16.25 %; p95 50 %
  (rank 21.85 falls among the six 50s); busy 6 h, idle 18 h.
- Jobs: "chat" serves on GPU 1 all day (succeeded): 100,000 generated and 50,000 prompt tokens
  an hour (2.4 M and 1.2 M), also counted by a second source at 90,000 (the larger count wins);
  "finetune" trains on GPU 0 from 06:00 to 12:00 (failed), 200,000 tokens an hour (1.2 M).
Day 1 (the previous day): both GPUs at 2 % and 80 W, CPU at 3 %: everything idle; energy
2 × 80 W × 24 h = 3.84 kWh. A serving job "warmup" ran 10:00-11:00 and was cancelled.

Money (economics.roi): 36,525 USD over 12 months is 100 USD a day, 608.75 USD a month fixed is
20 USD a day, energy at 0.25 USD/kWh × PUE 1.2 = 0.30 USD a kWh.
- Day 2: energy 7.92 + 7.2 = 15.12 kWh -> 4.536 USD; cost 124.536 USD. Every hour's mean GPU
  utilisation (2h + 20 %) is above 10 %: idle cost 0. Value: 2.4 M generated × 10 USD/M = 24 USD,
  6 GPU-hours of training × 2 USD = 12 USD: 36 USD. RoI (36 − 124.536) / 124.536 = −71.0927 %.
- Day 1: 3.84 kWh -> 1.152 USD; cost 121.152 USD, all of it idle; value 0; RoI −100 %.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model

from dashboard.economics.models import CostProfile, ValueRates
from dashboard.fleet import rollup
from dashboard.fleet.models import Accelerator, GpuSample, Machine, SystemSample, ThroughputSample
from dashboard.jobs.models import Job, JobAttempt

UTC = UTC
DAY1 = datetime(2026, 11, 10, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _machine(name: str, day1: datetime, gpus: int = 2) -> Machine:
    m = Machine.objects.create(name=name, created_at=day1, mem_total_bytes=256 * 2**30)
    for i in range(gpus):
        Accelerator.objects.create(
            machine=m,
            index=i,
            vendor="nvidia",
            name="NVIDIA H100 80GB HBM3",
            uuid=f"{name}-{i}",
            mem_total_bytes=85520809984,
            power_limit_watts=700.0,
        )
    return m


def _profile(m: Machine, day1: datetime) -> None:
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


def _window(m: Machine, seq: int, end: datetime, cpu: float, gpus: list[tuple[float, float]]) -> None:
    SystemSample.objects.create(
        machine=m,
        seq=seq,
        ts=end,
        interval_s=3600,
        count=3600,
        cpu_percent_mean=cpu,
        cpu_percent_min=cpu,
        cpu_percent_max=cpu,
    )
    for index, (util, watts) in enumerate(gpus):
        GpuSample.objects.create(
            machine=m,
            seq=seq,
            gpu_index=index,
            ts=end,
            interval_s=3600,
            count=3600,
            util_percent_mean=util,
            util_percent_min=util,
            util_percent_max=util,
            power_watts_mean=watts,
            power_watts_min=watts,
            power_watts_max=watts,
        )


def _job(m: Machine, name: str, kind: str, start: datetime, end: datetime, gpus: list[int], outcome: str) -> Job:
    owner = get_user_model().objects.get_or_create(username="seed-owner")[0]
    job = Job.objects.create(
        name=name,
        kind=kind,
        owner=owner,
        machine=m,
        assigned_gpus=gpus,
        argv=["x"],
        status=outcome if outcome in ("succeeded", "failed", "cancelled") else "succeeded",
        started_at=start,
        finished_at=end,
        attempt=1,
    )
    JobAttempt.objects.create(job=job, number=1, machine=m, gpus=gpus, started_at=start, ended_at=end, outcome=outcome)
    return job


def two_days(day1: datetime = DAY1, name: str = "gpu-01") -> Machine:
    """The machine described above; rollups caught up."""
    day2 = day1 + timedelta(days=1)
    m = _machine(name, day1)
    _profile(m, day1)
    ValueRates.objects.get_or_create(
        machine=None,
        defaults={"currency": "USD", "serve_per_million_generated": Decimal("10"), "train_per_gpu_hour": Decimal("2")},
    )
    for h in range(24):
        _window(m, h + 1, day1 + h * HOUR + HOUR / 2, 3.0, [(2.0, 80.0), (2.0, 80.0)])
        _window(
            m, 25 + h, day2 + h * HOUR + HOUR / 2, 50.0 if h < 6 else 5.0, [(4.0 * h, 100.0 + 20 * h), (40.0, 300.0)]
        )
    _job(m, "warmup", "serve", day1 + 10 * HOUR, day1 + 11 * HOUR, [0], "cancelled")
    chat = _job(m, "chat", "serve", day2, day2 + 24 * HOUR, [1], "succeeded")
    finetune = _job(m, "finetune", "train", day2 + 6 * HOUR, day2 + 12 * HOUR, [0], "failed")
    for h in range(24):
        ts = day2 + h * HOUR + HOUR / 2
        for source, generated, prompt in (("prometheus", 100_000, 50_000), ("progress", 90_000, 45_000)):
            ThroughputSample.objects.create(
                machine=m,
                seq=25 + h,
                job_key=chat.pk,
                source=source,
                ts=ts,
                interval_s=3600,
                generated_tokens=generated,
                prompt_tokens=prompt,
            )
        if 6 <= h < 12:
            ThroughputSample.objects.create(
                machine=m,
                seq=25 + h,
                job_key=finetune.pk,
                source="progress",
                ts=ts,
                interval_s=3600,
                train_tokens=200_000,
            )
    rollup.catch_up()
    return m


def fleet(day1: datetime = DAY1) -> None:
    """gpu-01 as above; gpu-02 priced the same but silent (its whole cost is amortisation and fixed,
    none of it idle: no telemetry says it idled); gpu-03 with no cost profile."""
    two_days(day1)
    _profile(_machine("gpu-02", day1), day1)
    _machine("gpu-03", day1, gpus=1)


def recent_day1() -> datetime:
    """Day 1 for tests that go through views (which use the real clock): the day before yesterday, so
    both days are whole, within raw retention, and day 2 is yesterday."""
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
