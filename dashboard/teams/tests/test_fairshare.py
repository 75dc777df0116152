"""Fair share: F = 2^(-U/S) with half-life-decayed usage, checked by hand with two teams."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from dashboard.teams import fairshare

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
H = 3600.0  # half-life: one hour


def test_a_gpu_second_one_half_life_ago_counts_half():
    one_second_then = fairshare.decayed_gpu_seconds(
        1, NOW - timedelta(seconds=3601), NOW - timedelta(seconds=3600), NOW, H
    )
    assert one_second_then == pytest.approx(0.5, rel=1e-3)


def test_two_teams_with_known_usage_get_the_factors_of_the_formula():
    # X held 1 GPU during the hour that ended one half-life ago; Y holds 1 GPU for the last hour.
    spans = [
        fairshare.Span(1, 1, NOW - timedelta(hours=2), NOW - timedelta(hours=1)),
        fairshare.Span(2, 1, NOW - timedelta(hours=1), None),
    ]
    usage = fairshare.decayed_usage(spans, NOW, H)
    # By hand: H/ln2 · (2^-1 - 2^-2) = 1298.5 for X, H/ln2 · (1 - 2^-1) = 2596.9 for Y.
    assert usage[1] == pytest.approx(H / math.log(2) * 0.25)
    assert usage[2] == pytest.approx(H / math.log(2) * 0.5)
    f = fairshare.factors({1: 1.0, 2: 1.0}, usage)
    # U: 1/3 and 2/3 of the usage; S: 1/2 each. F = 2^(-(1/3)/(1/2)) and 2^(-(2/3)/(1/2)).
    assert f[1] == pytest.approx(2 ** (-2 / 3)) and f[1] == pytest.approx(0.62996, abs=1e-5)
    assert f[2] == pytest.approx(2 ** (-4 / 3)) and f[2] == pytest.approx(0.39685, abs=1e-5)
    # Giving Y twice X's share makes both exactly at their share: F = 1/2 each.
    f = fairshare.factors({1: 1.0, 2: 2.0}, usage)
    assert f[1] == pytest.approx(0.5) and f[2] == pytest.approx(0.5)


def test_a_team_that_used_nothing_has_factor_one():
    assert fairshare.factors({1: 1.0, 2: 3.0}, {}) == {1: 1.0, 2: 1.0}
