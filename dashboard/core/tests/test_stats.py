from __future__ import annotations

import pytest

from dashboard.core.stats import percentile


def test_p95_interpolates_between_closest_ranks():
    assert percentile([], 0.95) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([float(v) for v in range(1, 21)], 0.95) == pytest.approx(19.05)  # rank 18.05
