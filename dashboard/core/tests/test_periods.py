"""The one definition of a period: parsing, calendar periods in the reader's zone, boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import User

from dashboard.core.periods import (
    PeriodError,
    StepStart,
    contains,
    day_edges,
    parse_range,
    resolve_period,
    window_filter,
)


def test_a_window_stamped_on_a_boundary_counts_in_the_period_that_starts_there():
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)
    assert contains(start, end, start)
    assert not contains(start, end, end)
    assert window_filter(start, end) == {"ts__gte": start, "ts__lt": end}
    assert window_filter(start, end, "bucket") == {"bucket__gte": start, "bucket__lt": end}


@pytest.mark.django_db
@pytest.mark.parametrize("step", [20, 300, 3600, 86400])
def test_the_database_puts_a_stamp_in_the_step_python_does(step):
    # Any table with a datetime column will do: users' join dates here.
    stamps = [
        datetime(2026, 11, 20, 10, 0, tzinfo=UTC),  # on every step's edge
        datetime(2026, 11, 20, 10, 0, 19, 999_999, tzinfo=UTC),  # a fraction of a second before one
        datetime(2026, 11, 20, 23, 59, 59, 500_000, tzinfo=UTC),
        datetime(2026, 11, 21, 0, 0, 20, tzinfo=UTC),
    ]
    for i, ts in enumerate(stamps):
        User.objects.create(username=f"u{i}", date_joined=ts)
    got = dict(User.objects.annotate(start=StepStart("date_joined", step)).values_list("username", "start"))
    want = {f"u{i}": int(ts.timestamp()) - int(ts.timestamp()) % step for i, ts in enumerate(stamps)}
    assert got == want


def test_adjacent_periods_share_no_window_and_drop_none():
    edges = [datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(4)]
    stamps = [edges[0] + timedelta(seconds=s) for s in range(0, 3 * 3600, 10)]
    counted = [sum(contains(a, b, t) for a, b in zip(edges, edges[1:], strict=False)) for t in stamps]
    assert counted == [1] * len(stamps)


def test_ranges_take_durations_and_iso_times_and_refuse_reversed_ones():
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert parse_range("24h", None, now) == (now - timedelta(hours=24), None)
    assert parse_range(None, None, now) == (None, None)
    assert parse_range("2026-11-25T00:00:00Z", "1h", now) == (
        datetime(2026, 11, 25, tzinfo=UTC),
        now - timedelta(hours=1),
    )
    with pytest.raises(PeriodError, match="until: must be after since"):
        parse_range("1h", "2h", now)
    with pytest.raises(PeriodError, match="since: expected an ISO date"):
        parse_range("yesterday", None, now)


def test_day_edges_split_at_midnight_in_the_zone():
    zone = ZoneInfo("Australia/Adelaide")
    start = datetime(2026, 11, 25, 12, tzinfo=zone)
    edges = day_edges(start, datetime(2026, 11, 27, 6, tzinfo=zone), zone)
    assert edges == [start, datetime(2026, 11, 26, tzinfo=zone), datetime(2026, 11, 27, tzinfo=zone), edges[-1]]


def test_a_day_week_or_month_starts_at_midnight_in_the_readers_zone():
    zone = ZoneInfo("Australia/Adelaide")
    now = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)  # 13:30 on Thursday 26 November in Adelaide
    day = resolve_period({"tz": "Australia/Adelaide"}, now)
    assert day.kind == "day" and day.partial
    assert day.start == datetime(2026, 11, 26, tzinfo=zone) and day.end == now
    # A running day is compared with the same 13.5 hours of the day before.
    assert day.previous_start == datetime(2026, 11, 25, tzinfo=zone)
    assert day.previous_end - day.previous_start == day.end - day.start

    week = resolve_period({"period": "week", "date": "2026-11-18", "tz": "Australia/Adelaide"}, now)
    assert week.start == datetime(2026, 11, 16, tzinfo=zone) and week.end == datetime(2026, 11, 23, tzinfo=zone)
    assert (week.previous_start, week.previous_end) == (datetime(2026, 11, 9, tzinfo=zone), week.start)
    assert not week.partial

    month = resolve_period({"period": "month", "date": "2026-03-05", "tz": "UTC"}, now)
    assert (month.start, month.end) == (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    # A whole month is compared with the whole month before (February: 28 days).
    assert (month.previous_start, month.previous_end) == (datetime(2026, 2, 1, tzinfo=UTC), month.start)
    assert month.title == "March 2026"


def test_custom_periods_take_dates_times_and_durations():
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    p = resolve_period({"from": "2026-11-20", "to": "2026-11-22T06:00", "tz": "Europe/Berlin"}, now)
    berlin = ZoneInfo("Europe/Berlin")
    assert p.kind == "custom"
    assert (p.start, p.end) == (datetime(2026, 11, 20, tzinfo=berlin), datetime(2026, 11, 22, 6, tzinfo=berlin))
    assert (p.previous_start, p.previous_end) == (p.start - (p.end - p.start), p.start)
    p = resolve_period({"from": "7d"}, now)
    assert (p.start, p.end) == (now - timedelta(days=7), now)
    p = resolve_period(
        {
            "from": "2026-11-20T00:00:00Z",
            "to": "2026-11-21T00:00:00Z",
            "previous_from": "2026-11-01T00:00:00Z",
            "previous_to": "2026-11-02T00:00:00Z",
        },
        now,
    )
    assert p.previous_start == datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"period": "fortnight"}, "period: expected one of day, week, month, custom"),
        ({"period": "custom"}, "from: required"),
        ({"from": "last tuesday"}, "from: expected an ISO date"),
        ({"from": "2026-11-20", "to": "2026-11-19"}, "to: must be after from"),
        ({"from": "2027-01-01"}, "from: must be in the past"),
        ({"from": "2024-01-01"}, "to: a period covers at most 400 days"),
        ({"date": "2026-13-01"}, "date: expected an ISO date"),
        ({"period": "month", "date": "2027-02-01"}, "date: that period has not started yet"),
        ({"tz": "Mars/Olympus"}, "tz: unknown time zone"),
        ({"from": "2026-11-20", "to": "2026-11-21", "previous_from": "2026-11-20T12:00:00Z"}, "previous_to:"),
    ],
)
def test_bad_parameters_are_refused_with_a_sentence_naming_them(params, message):
    with pytest.raises(PeriodError, match=message.replace("(", r"\(")):
        resolve_period(params, datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
