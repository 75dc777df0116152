"""Read-side functions shared by the JSON API and the HTML pages."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Avg, Prefetch, QuerySet
from django.utils import timezone

from .models import Accelerator, GpuRollup, Machine, SystemRollup

SPARKLINE_MINUTES = 60


ACCELERATOR_FIELDS = (
    "index",
    "vendor",
    "name",
    "uuid",
    "mem_total_bytes",
    "power_limit_watts",
    "parent_uuid",
    "mig_profile",
    "gpu_instance_id",
    "compute_instance_id",
    "gpm_supported",
    "driver",
)
_EMPTY_IS_NONE = ("uuid", "parent_uuid", "mig_profile", "driver")  # stored as "" when unknown


def accelerator_dict(a: Accelerator) -> dict[str, Any]:
    return _accelerator_row({f: getattr(a, f) for f in ACCELERATOR_FIELDS})


def _accelerator_row(row: dict[str, Any]) -> dict[str, Any]:
    for f in _EMPTY_IS_NONE:
        row[f] = row[f] or None
    return row


def accelerators_by_machine() -> dict[int, list[dict[str, Any]]]:
    """Every accelerator as :func:`accelerator_dict` gives it, by machine id in index order, read as
    plain rows: a whole fleet's 24,000 model instances and their prefetch were half of the alert
    rules' shared read at 3,000 machines (bench/README.md, issue 13)."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in Accelerator.objects.order_by("machine_id", "index").values("machine_id", *ACCELERATOR_FIELDS):
        out[row.pop("machine_id")].append(_accelerator_row(row))
    return out


def devices(
    accelerators: Iterable[Accelerator | dict[str, Any]], latest: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Inventory joined with the latest sample: one row per device, inventory first, by index.

    A row holds the inventory's fields overlaid with the sample's values that are not None (the
    sample's ``mem_total_bytes`` wins: a MIG device's can change). A device in the inventory
    without a sample keeps its inventory fields; one sampled but not in the inventory (the
    inventory arrives with the agent's first batch only) is named ``GPU <index>``.
    """
    sampled = {g["index"]: g for g in (latest or {}).get("gpus") or []}
    rows = []
    for acc in accelerators:
        inventory = accelerator_dict(acc) if isinstance(acc, Accelerator) else acc
        sample = sampled.pop(inventory["index"], {})
        rows.append({**inventory, **{k: v for k, v in sample.items() if v is not None}})
    for index, sample in sorted(sampled.items()):
        rows.append({"name": f"GPU {index}", "mem_total_bytes": None, "power_limit_watts": None, **sample})
    return rows


def accelerator_summary(accelerators: list[Accelerator]) -> str:
    """'8 × H100 80GB HBM3' style text; several models are listed one after the other."""
    counts: dict[str, int] = defaultdict(int)
    for a in accelerators:
        if not a.parent_uuid:  # MIG slices are part of their parent GPU
            counts[a.name.replace("NVIDIA ", "")] += 1
    return ", ".join(f"{n} × {name}" for name, n in counts.items())


def machine_dict(m: Machine, now: datetime, sparkline: dict | None = None) -> dict[str, Any]:
    accelerators = list(m.accelerators.all())
    return {
        "name": m.name,
        "hostname": m.hostname,
        "os": m.os,
        "cpu_model": m.cpu_model,
        "cpu_cores": m.cpu_cores,
        "cpu_threads": m.cpu_threads,
        "mem_total_bytes": m.mem_total_bytes,
        "agent_version": m.agent_version,
        "policy": m.policy,
        "online": m.is_online(now),
        "last_seen": m.last_seen_at.isoformat() if m.last_seen_at else None,
        "last_seq": m.last_seq,
        "spool_dropped": m.spool_dropped,
        "spool_refused": m.spool_refused,
        "last_refusal": m.last_refusal,
        "last_refusal_at": m.last_refusal_at.isoformat() if m.last_refusal_at else None,
        "tokens_dropped": m.tokens_dropped,
        "accelerators": [accelerator_dict(a) for a in accelerators],
        "accelerator_summary": accelerator_summary(accelerators),
        "latest": m.latest,
        "sparkline": sparkline or {"t": [], "cpu_percent": [], "gpu_util_percent": []},
    }


def sparklines(machine_ids: list[int], now: datetime) -> dict[int, dict[str, list]]:
    """Per machine, the last hour of minute means: CPU % and GPU utilisation averaged over devices."""
    since = now - timedelta(minutes=SPARKLINE_MINUTES)
    out: dict[int, dict[str, list]] = {}
    cpu = (
        SystemRollup.objects.filter(machine_id__in=machine_ids, resolution_s=60, bucket__gte=since)
        .order_by("machine_id", "bucket")
        .values_list("machine_id", "bucket", "cpu_percent_mean")
    )
    gpu_rows = (
        GpuRollup.objects.filter(machine_id__in=machine_ids, resolution_s=60, bucket__gte=since)
        .values("machine_id", "bucket")
        .annotate(u=Avg("util_percent_mean"))
        .order_by()
    )
    gpu = {(r["machine_id"], r["bucket"]): r["u"] for r in gpu_rows}
    for machine_id, bucket, value in cpu:
        line = out.setdefault(machine_id, {"t": [], "cpu_percent": [], "gpu_util_percent": []})
        line["t"].append(int(bucket.timestamp()) * 1000 + 30_000)
        line["cpu_percent"].append(value)
        line["gpu_util_percent"].append(gpu.get((machine_id, bucket)))
    return out


def fleet_overview(
    now: datetime | None = None, offset: int = 0, limit: int | None = None, machines: QuerySet | None = None
) -> list[dict[str, Any]]:
    """Machines by name with inventory, online state, latest values and a sparkline (a page of them);
    ``machines`` narrows the fleet (to what a user's teams may see)."""
    now = now or timezone.now()
    base = machines if machines is not None else Machine.objects.all()
    qs = base.prefetch_related(Prefetch("accelerators")).order_by("name")
    machines = list(qs[offset : offset + limit] if limit is not None else qs[offset:])
    lines = sparklines([m.pk for m in machines], now)
    return [machine_dict(m, now, lines.get(m.pk)) for m in machines]


def machine_detail(machine: Machine, now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    return machine_dict(machine, now, sparklines([machine.pk], now).get(machine.pk))
