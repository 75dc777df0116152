"""What a rule check returns, and the reads every check shares (machines, devices, a span of windows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Avg, Count, Max, Min, Q, QuerySet

from dashboard.core.periods import window_filter
from dashboard.fleet.models import GpuSample, Machine
from dashboard.fleet.queries import accelerators_by_machine, devices

from .models import AlertRule

# A span may start this much after the window's start (an agent's first window, a short gap).
COVERAGE_SLACK = timedelta(seconds=60)


@dataclass(frozen=True)
class Finding:
    key: str
    message: str
    machine_id: int | None = None
    gpu_index: int | None = None
    job_id: int | None = None


@dataclass
class Verdict:
    firing: list[Finding] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)


def machines(rule: AlertRule) -> QuerySet[Machine]:
    found = Machine.objects.order_by("name")
    return found.filter(pk=rule.machine_id) if rule.machine_id else found


class Fleet:
    """The machines with their state, devices and newest window, read once per evaluation.

    Most rules judge every machine's newest window. Each used to read the fleet on its own. At 750
    machines that was 0.4-0.9 s per rule, mostly decoding the same 750 ``latest`` documents
    (~10 KB each) and building the same device rows (bench/README.md, "bench/alerts.py"). One
    ``evaluate()`` run reads them on first use and every rule shares them. A rule only reads
    them; what it writes goes to its own tables (watches, tracked processes)."""

    def __init__(self) -> None:
        self._all: list[Machine] | None = None
        self._accelerators: dict[int, list[dict[str, Any]]] = {}
        self._rows: dict[int, list[dict[str, Any]]] = {}

    def machines(self, rule: AlertRule, *, reported: bool = False, seen: bool = False) -> list[Machine]:
        """The rule's machines by name (the fleet, or its one machine). ``reported``: only those
        with a newest window; ``seen``: only those that ever sent a batch."""
        return [
            m
            for m in self._read()
            if (not rule.machine_id or m.pk == rule.machine_id)
            and (not reported or m.latest is not None)
            and (not seen or m.last_seen_at is not None)
        ]

    def _read(self) -> list[Machine]:
        if self._all is None:
            self._all = list(Machine.objects.order_by("name"))
            self._accelerators = accelerators_by_machine()
        return self._all

    def gpu_rows(self, machine: Machine, physical_only: bool = True) -> list[dict[str, Any]]:
        """The machine's devices joined with its newest window; whole GPUs only unless told otherwise."""
        self._read()
        if machine.pk not in self._rows:  # joined once per machine, for both kinds of callers
            self._rows[machine.pk] = devices(self._accelerators.get(machine.pk, []), machine.latest)
        rows = self._rows[machine.pk]
        return [r for r in rows if not r.get("parent_uuid")] if physical_only else rows


@dataclass(frozen=True)
class Span:
    """Raw windows of one GPU over ``[since, now]``: how many had the column, its mean and max."""

    windows: int
    mean: float | None
    top: float | None
    first: datetime | None

    def covers(self, since: datetime, span: timedelta) -> bool:
        """Whether the windows reach back to the span's start (give or take a window)."""
        slack = min(COVERAGE_SLACK, span / 4)
        return bool(self.windows) and self.first is not None and self.first - since <= slack


def spans(
    machine_ids: list[int], since: datetime, now: datetime, columns: tuple[str, ...]
) -> dict[tuple[int, int], dict[str, Span]]:
    """:func:`span` for every GPU of ``machine_ids`` and each of ``columns``, in one grouped query
    (a rule over a fleet would otherwise ask once per machine, GPU and column: 12,000 queries a run
    at 750 machines); a GPU without windows in the span is absent."""
    aggregates: dict[str, Any] = {}
    for column in columns:
        name = f"{column}_mean"
        has = Q(**{f"{name}__isnull": False})
        aggregates |= {
            f"{column}__n": Count(name),
            f"{column}__mean": Avg(name),
            f"{column}__top": Max(name),
            f"{column}__first": Min("ts", filter=has),
        }
    rows = (
        GpuSample.objects.filter(machine_id__in=machine_ids, **window_filter(since, now))
        .values("machine_id", "gpu_index")
        .annotate(**aggregates)
    )
    return {
        (r["machine_id"], r["gpu_index"]): {
            c: Span(r[f"{c}__n"], r[f"{c}__mean"], r[f"{c}__top"], r[f"{c}__first"]) for c in columns
        }
        for r in rows
    }


def span(machine_id: int, gpu_index: int, since: datetime, now: datetime, column: str) -> Span:
    """Window means of ``column`` (a gauge, e.g. ``util_percent``) over a GPU's windows in ``[since, now)``."""
    name = f"{column}_mean"
    seen = GpuSample.objects.filter(
        machine_id=machine_id, gpu_index=gpu_index, **window_filter(since, now), **{f"{name}__isnull": False}
    ).aggregate(n=Count(name), mean=Avg(name), top=Max(name), first=Min("ts"))
    return Span(seen["n"], seen["mean"], seen["top"], seen["first"])
