"""``GET /metrics``: the fleet's latest values in the Prometheus text format, for Grafana users.

A fresh registry per request with one collector that reads the database, so the numbers are the
ones the pages show. Values come from each machine's newest window (means of gauges); an offline
machine exports only ``hwdash_machine_online 0`` and its last-seen time, since its last values are
stale, and a value the agent could not read (None) is left out, never exported as 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dashboard.accounts.auth import token_or_session
from dashboard.alerts.context import visible_alerts
from dashboard.alerts.models import AlertRule
from dashboard.fleet import visibility
from dashboard.jobs.models import Job
from dashboard.teams import access as team_access

# (metric name, help, key in latest["system"])
SYSTEM_GAUGES = (
    ("hwdash_cpu_percent", "CPU use, % of all cores (mean over the newest window).", "cpu_percent"),
    ("hwdash_load1", "One-minute load average.", "load1"),
    ("hwdash_memory_used_bytes", "Memory in use, bytes.", "mem_used_bytes"),
    ("hwdash_memory_total_bytes", "Memory installed, bytes.", "mem_total_bytes"),
    ("hwdash_swap_used_bytes", "Swap in use, bytes.", "swap_used_bytes"),
)
# (metric name, help, key in latest["gpus"][i])
GPU_GAUGES = (
    ("hwdash_gpu_utilization_percent", "GPU utilisation, % (mean over the newest window).", "util_percent"),
    ("hwdash_gpu_memory_utilization_percent", "Time the GPU's memory controller was busy, %.", "mem_util_percent"),
    ("hwdash_gpu_memory_used_bytes", "GPU memory in use, bytes.", "mem_used_bytes"),
    ("hwdash_gpu_memory_total_bytes", "GPU memory installed, bytes.", "mem_total_bytes"),
    ("hwdash_gpu_power_watts", "GPU power draw, watts.", "power_watts"),
    ("hwdash_gpu_power_limit_watts", "GPU power limit, watts.", "power_limit_watts"),
    ("hwdash_gpu_temperature_celsius", "GPU temperature, degrees Celsius.", "temp_c"),
)
GPU_LABELS = ["machine", "gpu", "uuid", "model"]


class FleetCollector(Collector):
    """Yields the metric families from the database each time the registry is rendered: the
    machines, jobs and alerts ``user`` may see (their teams' and the shared pool's; staff: all)."""

    def __init__(self, user: Any):
        self.user = user

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        machines = list(visibility.visible_machines(self.user).prefetch_related("accelerators").order_by("name"))
        online = GaugeMetricFamily(
            "hwdash_machine_online", "1 if the machine reported recently, else 0.", labels=["machine"]
        )
        last_seen = GaugeMetricFamily(
            "hwdash_machine_last_seen_timestamp_seconds",
            "When the machine last reported, Unix seconds.",
            labels=["machine"],
        )
        dropped = CounterMetricFamily(
            "hwdash_spool_dropped", "Samples the machine's agent had to discard from its spool.", labels=["machine"]
        )
        refused = CounterMetricFamily(
            "hwdash_spool_refused",
            "Samples the server refused as malformed, which the machine's agent set aside as dead letters.",
            labels=["machine"],
        )
        system = {name: GaugeMetricFamily(name, doc, labels=["machine"]) for name, doc, _ in SYSTEM_GAUGES}
        gpu = {name: GaugeMetricFamily(name, doc, labels=GPU_LABELS) for name, doc, _ in GPU_GAUGES}
        for m in machines:
            is_online = m.is_online(now)
            online.add_metric([m.name], 1.0 if is_online else 0.0)
            dropped.add_metric([m.name], float(m.spool_dropped))
            refused.add_metric([m.name], float(m.spool_refused))
            if m.last_seen_at is not None:
                last_seen.add_metric([m.name], m.last_seen_at.timestamp())
            if not is_online or not m.latest:
                continue
            _add_values(system, SYSTEM_GAUGES, [m.name], m.latest.get("system") or {})
            accelerators = {a.index: a for a in m.accelerators.all()}
            for entry in m.latest.get("gpus") or []:
                acc = accelerators.get(entry["index"])
                uuid = entry.get("uuid") or (acc.uuid if acc else "") or ""
                labels = [m.name, str(entry["index"]), uuid, acc.name if acc else ""]
                _add_values(gpu, GPU_GAUGES, labels, entry)
        yield online
        yield last_seen
        yield dropped
        yield refused
        yield from system.values()
        yield from gpu.values()
        yield from _jobs(self.user)
        yield from _alerts(self.user)


def _add_values(families: dict[str, GaugeMetricFamily], spec: tuple, labels: list[str], values: dict[str, Any]) -> None:
    for name, _, key in spec:
        value = values.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            families[name].add_metric(labels, float(value))


def _jobs(user: Any) -> Iterator[Metric]:
    family = GaugeMetricFamily("hwdash_jobs", "Jobs by status.", labels=["status"])
    counts = dict(
        team_access.scope_jobs(Job.objects.all(), user).values_list("status").annotate(n=Count("pk")).order_by()
    )
    for status in Job.Status.values:
        family.add_metric([status], float(counts.get(status, 0)))
    yield family


def _alerts(user: Any) -> Iterator[Metric]:
    family = GaugeMetricFamily("hwdash_alerts_open", "Open alerts by rule kind.", labels=["kind"])
    open_alerts = visible_alerts(user).filter(resolved_at=None)
    counts = dict(open_alerts.values_list("rule__kind").annotate(n=Count("pk")).order_by())
    for kind in AlertRule.Kind.values:
        family.add_metric([kind], float(counts.get(kind, 0)))
    yield family


@require_GET
@token_or_session(login_page=False)
def metrics(request: HttpRequest) -> HttpResponse:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(request.user))
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
