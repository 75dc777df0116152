"""A machine's charted data as CSV: the metrics of its page over the page's range, one row per
step and series, at the resolution the charts draw (so a spreadsheet shows what the page showed).

The series come from the functions the charts' API calls; this module only lays them out. Times
are ISO 8601 with the offset of the zone the request is served in (the browser's, once it has said
which), so they read as on the page and parse without guessing.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.utils import timezone

from dashboard.fleet import series, throughput
from dashboard.fleet.models import Machine

HEADER = ["step_start", "step_end", "metric", "unit", "series", "device", "job", "min", "mean", "max"]


def machine_metrics(machine: Machine) -> list[str]:
    """What the machine page charts: system metrics, GPU ones where it has accelerators, tokens."""
    names = [m for m in series.METRICS if m.startswith("system.")]
    if machine.accelerators.exists():
        names += [m for m in series.METRICS if m.startswith("gpu.")]
    return names + list(throughput.METRICS)


def parse_metrics(text: str, machine: Machine) -> list[str]:
    """``metrics=a,b`` from a query string; empty: every metric of the page. Unknown names raise
    ``series.SeriesError`` naming them and where the list is."""
    if not text.strip():
        return machine_metrics(machine)
    wanted = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in series.METRICS and m not in throughput.METRICS]
    if unknown:
        raise series.SeriesError(
            f"metrics: unknown {', '.join(map(repr, unknown))}; the names are those of GET /api/v1/machines/NAME/series"
        )
    return list(dict.fromkeys(wanted))


def machine_rows(
    machine: Machine, metrics: list[str], since: datetime, until: datetime, job_names: dict[int, str]
) -> Iterator[list[Any]]:
    """The header, then ``[step start, step end, metric, unit, series, device, job, min, mean, max]``
    per point; a counter's or a token rate's one value is its mean, its min and max are None
    (csv.writer writes None as an empty cell)."""
    zone = timezone.get_current_timezone()
    yield HEADER
    for metric in metrics:
        if metric in throughput.METRICS:
            data = throughput.machine_series(machine, metric, since, until, job_names)
        else:
            data = series.machine_series(machine, metric, since, until)
        step = data["step_s"]
        for s in data["series"]:
            lows, highs = s.get("min"), s.get("max")
            for i, t in enumerate(s["t"]):
                start = t // 1000 - step // 2  # a point stands at the middle of its step
                yield [
                    _iso(start, zone),
                    _iso(start + step, zone),
                    metric,
                    data["unit"],
                    s["name"],
                    s.get("device"),
                    s.get("job"),
                    lows[i] if lows else None,
                    s["mean"][i],
                    highs[i] if highs else None,
                ]


def _iso(epoch_s: int, zone: Any) -> str:
    return datetime.fromtimestamp(epoch_s, zone).isoformat()
