"""Tokens per period for RoI, summed in SQL, against the rule read window by window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from dashboard.core.periods import day_edges
from dashboard.economics import roi
from dashboard.fleet import throughput

from . import seed

pytestmark = pytest.mark.django_db
ADELAIDE = ZoneInfo("Australia/Adelaide")  # +10:30 in December: local midnights fall on half hours


def test_days_in_a_half_hour_zone_and_a_range_starting_mid_minute_match_the_window_rule():
    machine = seed.machine_with("gpu-01", 2)
    midnight = datetime(2026, 11, 30, tzinfo=ADELAIDE).astimezone(UTC)
    # Windows every 10 s for 20 minutes across a local midnight, some counted by two sources.
    for seq, i in enumerate(range(-60, 60), start=1):
        ts = midnight + timedelta(seconds=10 * i)
        seed.tokens(machine, seq, ts, generated=100 + i, source="prometheus")
        if i % 7 == 0:
            seed.tokens(machine, seq, ts, generated=150 + i, source="progress")
    # The range starts 12.5 s into a minute, 5 minutes before midnight, and ends 5 minutes after it.
    start = midnight - timedelta(minutes=5, seconds=-12.5)
    edges = day_edges(start, midnight + timedelta(minutes=5), ADELAIDE)
    assert edges[1] == midnight  # a day's edge inside the range, on a half hour in UTC
    by_window = roi.tokens_by_period(
        throughput.window_tokens(throughput.machine_rows(machine, edges[0], edges[-1])), edges
    )
    assert roi._tokens_by_period(machine, edges) == by_window
    assert [p["generated"] for p in by_window] != [0, 0]  # both days hold tokens
