"""Periods: how every page, API, report and RoI figure reads a time range, and what falls in it.

**One definition.** A period is half-open, ``[start, end)``. A telemetry window is stamped with the
time its measurement ended (``ts``), and it counts in the period that contains that stamp:
``start <= ts < end``. Minute and hour rollups bucket windows the same way (a window stamped
10:00:00 is in the 10:00 bucket), so a figure summed from raw windows and one summed from rollups
over the same period take the same windows, and two adjacent periods never share or drop one.
``window_filter`` is that rule as ORM lookups; use it rather than writing ``ts__gte``/``ts__lt``.

Moments are read one way everywhere: a duration back from now (``90s``, ``30m``, ``24h``, ``7d``,
``2w``), an ISO date (midnight in the given zone) or an ISO time (in that zone when it carries no
offset). A value that is none of these raises ``PeriodError`` whose message names the parameter.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db.models import BigIntegerField, F, Func
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

KINDS = ("day", "week", "month", "custom")
MAX_SPAN = timedelta(days=400)

_DURATION = re.compile(r"^(\d{1,9})(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class PeriodError(ValueError):
    """A time parameter that cannot be used; the message is one sentence naming it."""


def window_filter(start: datetime, end: datetime, field: str = "ts") -> dict[str, datetime]:
    """ORM lookups for the rows stamped in ``[start, end)`` (see the module's definition)."""
    return {f"{field}__gte": start, f"{field}__lt": end}


def step_start_sql(column: str, step: int, vendor: str) -> str:
    """SQL for the start of the ``step``-second step that holds the stamp in ``column``, as epoch seconds.

    Steps count from the epoch in UTC, as ``epoch - epoch % step`` does in Python: a one-day step
    starts at midnight UTC. Charts downsample with it in the database, so a week of minute rows
    reaches Python as one row per step, not one per minute (bench/README.md, bench/series.py).
    ``step`` is written into the SQL as a number, never taken from a request as text.
    """
    step = int(step)
    if vendor == "postgresql":
        # date_part gives a double, EXTRACT a numeric, whose division costs ~20 % more per row.
        # A double holds an epoch to ~2e-7 s, so a stamp a microsecond before a step's edge
        # still floors into the step before it.
        return f"(FLOOR(date_part('epoch', {column}) / {step})::bigint * {step})"
    # SQLite keeps datetimes as UTC text, 'YYYY-MM-DD HH:MM:SS.ffffff'. The fraction is cut before
    # strftime reads it, which would round 19.9999996 s to 20 s (it keeps milliseconds); '%%'
    # because Django's SQLite cursor turns '%s' into a placeholder and '%%' into '%'.
    return f"(CAST(strftime('%%s', substr({column}, 1, 19)) AS INTEGER) / {step} * {step})"


class StepStart(Func):
    """``step_start_sql`` as an ORM expression: ``.annotate(start=StepStart("ts", 300))``."""

    output_field = BigIntegerField()

    def __init__(self, field: str, step: int) -> None:
        super().__init__(F(field))
        self.step = int(step)

    def as_sql(self, compiler, connection, **extra):  # type: ignore[override]
        column, params = compiler.compile(self.source_expressions[0])
        return step_start_sql(column, self.step, connection.vendor), params


def contains(start: datetime, end: datetime, ts: datetime) -> bool:
    """Whether a row stamped ``ts`` counts in the period ``[start, end)``."""
    return start <= ts < end


def parse_zone(name: str) -> tzinfo:
    """An IANA zone name (the browser's), else the server's TIME_ZONE."""
    if not name:
        return timezone.get_current_timezone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PeriodError(f"tz: unknown time zone {name!r}; use an IANA name such as Europe/Berlin") from None


def parse_moment(value: str, now: datetime, name: str, zone: tzinfo = UTC) -> datetime:
    """A duration back from ``now``, an ISO date (midnight in ``zone``) or an ISO time."""
    value = value.strip()
    match = _DURATION.match(value)
    if match:
        return now - timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    moment: datetime | None
    try:
        day = parse_date(value)
        if day is not None:
            return datetime.combine(day, time.min, tzinfo=zone)
        moment = parse_datetime(value)
    except (ValueError, OverflowError):  # well formed, but no such day or time
        moment = None
    if moment is None:
        raise PeriodError(
            f"{name}: expected an ISO date (2026-11-20), an ISO time (2026-11-20T08:00:00+01:00) "
            f"or a duration back from now (1h, 24h, 7d); got {value!r}"
        )
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def parse_range(
    since: str | None, until: str | None, now: datetime | None = None, zone: tzinfo = UTC
) -> tuple[datetime | None, datetime | None]:
    """``since``/``until`` as the API takes them; either may be absent (None), and if both are
    given ``until`` must be later."""
    now = now or timezone.now()
    start = parse_moment(since, now, "since", zone) if since and since.strip() else None
    end = parse_moment(until, now, "until", zone) if until and until.strip() else None
    if start is not None and end is not None and end <= start:
        raise PeriodError("until: must be after since")
    return start, end


def required_range(since: str, until: str | None, now: datetime | None = None) -> tuple[datetime, datetime]:
    """``since`` (required) to ``until`` (default now)."""
    now = now or timezone.now()
    start, end = parse_range(since, until, now)
    if start is None:
        raise PeriodError("since: required (a duration such as 24h, or an ISO time)")
    end = end or now
    if end <= start:
        raise PeriodError("since: must be before until")
    return start, end


# ---------------------------------------------------------------------------------------------
# Calendar periods: a day, week or month in the user's zone, or a custom range, with the one before


@dataclass
class Period:
    kind: str  # day, week, month or custom
    start: datetime
    end: datetime  # exclusive; never after now
    zone: tzinfo
    previous_start: datetime
    previous_end: datetime
    partial: bool = False  # a calendar period still running: it ends now

    @property
    def zone_name(self) -> str:
        return getattr(self.zone, "key", None) or str(self.zone)

    @property
    def title(self) -> str:
        """'Tuesday 24 November 2026', 'Week of 23 November 2026', 'November 2026' or a range."""
        start = self.start.astimezone(self.zone)
        if self.kind == "day":
            return start.strftime("%A %-d %B %Y")
        if self.kind == "week":
            return "Week of " + start.strftime("%A %-d %B %Y")
        if self.kind == "month":
            return f"{calendar.month_name[start.month]} {start.year}"
        end = self.end.astimezone(self.zone)
        return f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M}"


def _calendar_start(kind: str, day: date) -> date:
    if kind == "week":
        return day - timedelta(days=day.weekday())
    if kind == "month":
        return day.replace(day=1)
    return day


def shift_period(kind: str, day: date, n: int) -> date:
    """The start of the calendar period ``n`` periods after the one starting on ``day``."""
    if kind == "day":
        return day + timedelta(days=n)
    if kind == "week":
        return day + timedelta(weeks=n)
    months = day.year * 12 + day.month - 1 + n
    return date(months // 12, months % 12 + 1, 1)


def _text(params: Any, name: str) -> str:
    return (params.get(name) or "").strip()


def resolve_period(params: Any, now: datetime | None = None) -> Period:
    """The period the query parameters ask for: ``from``/``to`` (custom; optionally ``previous_from``
    and ``previous_to``, else the same length just before), or ``period`` (day, week, month)
    containing ``date`` (default today), in the zone ``tz``. A running period ends now and is
    compared with the same stretch of the period before it."""
    now = now or timezone.now()
    zone = parse_zone(_text(params, "tz"))
    kind = _text(params, "period") or ("custom" if _text(params, "from") or _text(params, "to") else "day")
    if kind not in KINDS:
        raise PeriodError(f"period: expected one of {', '.join(KINDS)}; got {kind!r}")

    if kind == "custom":
        if not _text(params, "from"):
            raise PeriodError("from: required for a custom period (an ISO date or time, or a duration such as 7d)")
        start = parse_moment(_text(params, "from"), now, "from", zone)
        end = parse_moment(_text(params, "to"), now, "to", zone) if _text(params, "to") else now
        if start >= now:
            raise PeriodError("from: must be in the past")
        end = min(end, now)
        if end <= start:
            raise PeriodError("to: must be after from")
        if end - start > MAX_SPAN:
            raise PeriodError(f"to: a period covers at most {MAX_SPAN.days} days")
        previous_start, previous_end = start - (end - start), start
        if _text(params, "previous_from"):  # what a page's CSV link passes for a calendar period
            previous_start = parse_moment(_text(params, "previous_from"), now, "previous_from", zone)
            previous_end = (
                parse_moment(_text(params, "previous_to"), now, "previous_to", zone)
                if _text(params, "previous_to")
                else previous_start + (end - start)
            )
            if not previous_start < previous_end <= start:
                raise PeriodError("previous_to: the previous period must end after it starts and no later than from")
        return Period("custom", start, end, zone, previous_start, previous_end)

    text = _text(params, "date")
    try:
        day = parse_date(text) if text else now.astimezone(zone).date()
    except ValueError:  # well formed but no such day
        day = None
    if day is None:
        raise PeriodError(f"date: expected an ISO date such as 2026-11-20; got {text!r}")
    first = _calendar_start(kind, day)
    start = datetime.combine(first, time.min, tzinfo=zone)
    if start >= now:
        raise PeriodError("date: that period has not started yet")
    natural_end = datetime.combine(shift_period(kind, first, 1), time.min, tzinfo=zone)
    end = min(natural_end, now)
    previous_start = datetime.combine(shift_period(kind, first, -1), time.min, tzinfo=zone)
    # The same stretch of the previous period (a whole month is compared with the whole month before).
    previous_end = start if end == natural_end else min(start, previous_start + (end - start))
    return Period(kind, start, end, zone, previous_start, previous_end, partial=end < natural_end)


def day_edges(start: datetime, end: datetime, zone: tzinfo) -> list[datetime]:
    """Midnights in ``zone`` that split ``[start, end)`` into calendar days, with both ends."""
    edges = [start]
    day = start.astimezone(zone).date() + timedelta(days=1)
    while True:
        edge = datetime.combine(day, time.min, tzinfo=zone)
        if edge >= end:
            break
        edges.append(edge)
        day += timedelta(days=1)
    edges.append(end)
    return edges
