"""Statistics shared by rollups, reports, the simulator and the benches."""

from __future__ import annotations

from collections.abc import Iterable

P95 = 0.95


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0-1) by linear interpolation between closest ranks (numpy's default
    method): for n sorted values, the value at rank q × (n − 1). None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = q * (len(ordered) - 1)
    below = int(rank)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (rank - below)
