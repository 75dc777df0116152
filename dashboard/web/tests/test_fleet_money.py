"""The fleet's money per day (``/api/v1/fleet/history``) equals the sum of every machine's RoI days,
to the cent, whether past days come from the cache or not, and whatever changed since they were cached."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core.cache import cache
from django.utils import timezone

from dashboard.economics import fleet_days
from dashboard.economics.hardware import assembly_key
from dashboard.economics.models import CostProfile, ValueRates
from dashboard.economics.tests import seed
from dashboard.fleet.models import GpuRollup
from dashboard.jobs.models import JobAttempt
from dashboard.web import fleet_history

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def empty_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def now():
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def fleet(now):
    """Machines of every kind money() meets: priced alone, by assembly, in another currency, never
    priced, put in service inside the range, training right now; telemetry in every kind of day."""
    priced = seed.priced_machine("gpu-01")  # three past days with energy, tokens and training
    CostProfile.objects.filter(machine=priced).update(host_power_watts=350.5)
    seed.shared_machine("gpu-02")  # no cost profile, tokens from three jobs
    euro = seed.machine_with("gpu-eur", 1, created=seed.today() - timedelta(days=10))
    CostProfile.objects.create(
        name="euro box",
        machine=euro,
        currency="EUR",
        purchase_price=Decimal("9000"),
        electricity_price_per_kwh=Decimal("0.31"),
    )
    seed.machine_with("cpu-01", 0, created=seed.today() - timedelta(days=10))  # no accelerators, no profile
    old = seed.machine_with("gpu-old", 2, created=seed.today() - timedelta(days=10, hours=7))
    CostProfile.objects.create(  # gpu-old's and gpu-late's, by their assembly
        name="H100 pairs",
        assembly=assembly_key(old),
        purchase_price=Decimal("61000"),
        electricity_price_per_kwh=Decimal("0.17"),
        host_power_watts=212.0,
        fixed_monthly=Decimal("93.10"),
    )
    seed.hours(old, seed.today() - timedelta(days=8), 24 * 8 + now.hour, 300.0, 61.0)
    for i in range(300):
        seed.tokens(old, i + 1, now - timedelta(minutes=37 * i), generated=5_000 + 7 * i)
    late = seed.machine_with("gpu-late", 2, created=now - timedelta(days=2, hours=5, minutes=17))
    late_job = seed.job(late, "train now", "train", now - timedelta(days=1, hours=3), now, [0, 1])
    JobAttempt.objects.filter(job=late_job).update(ended_at=None)  # still running: counts up to now
    # Hours across the range's first, partial day, yesterday and today, some without a power sensor.
    seed.hours(late, seed.today() - timedelta(days=7), 24 * 7 + now.hour, None, 37.5)
    seed.hours(priced, seed.today(), now.hour, 420.0, 37.5)
    for i in range(200):
        seed.tokens(late, 10_000 + i, now - timedelta(minutes=53 * i), late_job, train=1234 + i)
    return {"priced": priced, "late": late}


def assert_equal_to_the_cent(got: dict, want: dict) -> None:
    assert {k: v for k, v in got.items() if k != "days"} == {k: v for k, v in want.items() if k != "days"}
    assert [d["t"] for d in got["days"]] == [d["t"] for d in want["days"]]
    for a, b in zip(got["days"], want["days"], strict=True):
        for key in ("cost", "value", "roi_percent"):
            if b[key] is None:
                assert a[key] is None, (key, a, b)
            else:
                assert a[key] == pytest.approx(b[key], abs=0.005), (key, a, b)


def test_the_fleet_money_equals_every_machines_roi_summed_cold_and_cached(fleet, now):
    since = now - timedelta(hours=24)
    want = fleet_history.money_uncached(since, now, now)
    assert len(want["days"]) >= 8 and want["left_out"] == ["gpu-eur"] and want["unset"] == ["cpu-01", "gpu-02"]
    assert any(d["value"] for d in want["days"]) and all(d["cost"] for d in want["days"])
    assert_equal_to_the_cent(fleet_history.money(since, now, now), want)  # cold: every day read
    assert_equal_to_the_cent(fleet_history.money(since, now, now), want)  # past days from the cache


def test_once_past_days_are_cached_only_today_is_read_and_the_first_day_comes_from_its_whole_day(
    fleet, now, monkeypatch
):
    since = now - timedelta(days=7)
    fleet_history.money(since, now, now)
    read = []
    original = fleet_days._read
    monkeypatch.setattr(fleet_days, "_read", lambda span, ms: read.append(span) or original(span, ms))
    later = now + timedelta(seconds=5)
    assert_equal_to_the_cent(
        fleet_history.money(since + timedelta(seconds=5), later, later),
        fleet_history.money_uncached(since + timedelta(seconds=5), later, later),
    )
    assert read == [(seed.today(), later)]  # the partial first day: its whole day's hours, a few windows


def test_a_past_day_changed_after_it_was_cached_is_read_again(fleet, now):
    since = now - timedelta(days=7)
    fleet_history.money(since, now, now)
    yesterday = seed.today() - timedelta(days=1)
    # An agent back from an outage: yesterday's tokens and a recomputed hour arrive today.
    seed.tokens(fleet["late"], 99_999, yesterday + timedelta(hours=3), train=10**9)
    seed.tokens(fleet["priced"], 99_999, yesterday + timedelta(hours=3), generated=10**8)
    GpuRollup.objects.filter(machine=fleet["priced"], resolution_s=3600, bucket=yesterday).update(count=1800)
    # A price edited: applied to every day, cached or not.
    CostProfile.objects.filter(machine=fleet["priced"]).update(electricity_price_per_kwh=Decimal("0.4"))
    ValueRates.objects.filter(machine=None).update(serve_per_million_generated=Decimal("7.5"))
    assert_equal_to_the_cent(fleet_history.money(since, now, now), fleet_history.money_uncached(since, now, now))


def test_a_power_limit_learnt_later_changes_the_estimated_energy_of_cached_days(fleet, now):
    since = now - timedelta(days=7)
    before = fleet_history.money(since, now, now)
    fleet["late"].accelerators.update(power_limit_watts=450.0)  # its GPUs have no power sensor
    after = fleet_history.money(since, now, now)
    assert_equal_to_the_cent(after, fleet_history.money_uncached(since, now, now))
    assert after["days"][-2]["cost"] < before["days"][-2]["cost"]


def test_the_api_serves_the_cached_figures(fleet, now, client, django_user_model):
    client.force_login(django_user_model.objects.create_user("viewer", password="x"))
    first = client.get("/api/v1/fleet/history", {"since": "7d"}).json()["money"]
    second = client.get("/api/v1/fleet/history", {"since": "7d"}).json()["money"]
    assert first["machines"] == second["machines"] == ["cpu-01", "gpu-01", "gpu-02", "gpu-late", "gpu-old"]
    assert [d["t"] for d in first["days"]][1:] == [d["t"] for d in second["days"]][1:]


def test_days_in_a_zone_half_an_hour_off_utc_equal_every_machines_roi(fleet, now):
    """Midnight in Adelaide is half past a UTC hour: days and the rollups' hours do not line up."""
    since = now - timedelta(days=7, minutes=11)
    with timezone.override(ZoneInfo("Australia/Adelaide")):
        want = fleet_history.money_uncached(since, now, now)
        assert_equal_to_the_cent(fleet_history.money(since, now, now), want)
        assert_equal_to_the_cent(fleet_history.money(since, now, now), want)


def test_a_first_day_shorter_than_the_hour_to_the_next_utc_hour_keeps_the_next_days_tokens_out(fleet, now):
    """A range that starts 9 minutes before an Adelaide midnight: its first day ends at half past a
    UTC hour, before the next whole UTC hour, so the windows read for that day stop at its end
    (the test above met this only when CI ran in the 11 minutes after Adelaide's midnight)."""
    zone = ZoneInfo("Australia/Adelaide")
    midnight = datetime.combine(now.astimezone(zone).date(), time.min, tzinfo=zone)
    if midnight + timedelta(minutes=2) > now:
        midnight -= timedelta(days=1)
    until = midnight + timedelta(minutes=1, seconds=55)
    since = until - timedelta(days=7, minutes=11)
    with timezone.override(zone):
        want = fleet_history.money_uncached(since, until, until)
        assert_equal_to_the_cent(fleet_history.money(since, until, until), want)
        assert_equal_to_the_cent(fleet_history.money(since, until, until), want)  # from the cache


def test_the_machine_panel_roi_from_cached_days_is_the_roi_read_from_rows(fleet, now):
    """The machine page's RoI (``cached=True``) reads past days from fleet_days' cache: same report."""
    from dashboard.economics import roi
    from dashboard.fleet.models import Machine

    for machine in Machine.objects.prefetch_related("accelerators").order_by("name"):
        fresh = roi.machine_roi(machine, now=now, cached=True)  # fills the cache
        again = roi.machine_roi(machine, now=now, cached=True)  # past days from it
        assert fresh == again == roi.machine_roi(machine, now=now), machine.name
