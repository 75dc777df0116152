"""What NVML's utilisation hides, for pages: GPM charts beside NVML's number (machine and job
pages) and the fleet's "busy but inefficient" GPUs.

NVML's ``util_percent`` is the share of time any kernel ran; GPM's SM activity, tensor activity,
DRAM bandwidth and occupancy say how much of the GPU worked (a 64×64 matmul loop on an H200: 30-35 %
NVML utilisation at 0.5 % SM activity, in issue 14 and in hwprobe/tests/fixtures/gpm/). The pages chart them with
``static/js/efficiency.js``; where a GPU has no GPM the panel says why, from what its agent
reported (``Accelerator.gpm_supported``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.core.cache import cache
from django.db.models import Avg, Count, Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from dashboard.core.periods import window_filter
from dashboard.fleet.models import Accelerator, GpuRollup, Machine
from dashboard.teams import access as team_access

# Busy but inefficient: NVML calls the GPU busy at least this share of the hour (%) ...
BUSY_PERCENT = 30.0
# ... while SM activity or tensor activity stays under these (%, GPM means over the same hour).
LOW_SM_PERCENT = 25.0
LOW_TENSOR_PERCENT = 10.0
RANKING_SPAN = timedelta(hours=1)
MINUTE = 60  # the rollup resolution the ranking reads (s)

# The series the charts draw, NVML's first: (metric in the series API, label).
CHART_METRICS = [
    ("gpu.util_percent", "NVML utilisation"),
    ("gpu.sm_util_percent", "SM activity"),
    ("gpu.tensor_util_percent", "Tensor activity"),
    ("gpu.dram_bw_util_percent", "DRAM bandwidth"),
    ("gpu.sm_occupancy_percent", "SM occupancy"),
]


def gpm_absent_reason(acc: Accelerator, parent: Accelerator | None = None) -> str | None:
    """Why this device has no GPM metrics (one sentence); None when its agent reads them."""
    if acc.gpm_supported:
        return None
    if acc.vendor != "nvidia":
        return "not an NVIDIA GPU: GPM is NVML's"
    if acc.gpm_supported is False or (parent is not None and parent.gpm_supported is False):
        what = f"its GPU ({parent.name})" if acc.parent_uuid and parent is not None else "this GPU"
        return f"{what} has no GPM: NVML's GPU Performance Monitoring needs Hopper or later"
    if acc.parent_uuid:
        return (
            "a MIG device whose GPU instance the agent could not read GPM for "
            "(GPM on MIG needs its parent's support and driver R525 or later)"
        )
    return (
        "the driver or nvidia-ml-py could not say whether this GPU has GPM "
        "(it needs driver R520 or later and nvidia-ml-py 11.515 or later)"
    )


def chart_panel(machine: Machine, gpus: list[int] | None = None, **range_: datetime | None) -> dict[str, Any]:
    """What ``templates/fleet/_efficiency.html`` needs: the devices (``gpus``: only those indices),
    each with whether GPM is charted for it or why not, and where the series come from.

    ``since``/``until`` (a job's run) fix the charted span; without them it follows the page's range.
    """
    accs = sorted(machine.accelerators.all(), key=lambda a: a.index)  # prefetched by the machine page
    by_uuid = {a.uuid: a for a in accs if a.uuid}
    shown = [a for a in accs if gpus is None or a.index in gpus]
    devices = []
    for acc in shown:
        why = gpm_absent_reason(acc, by_uuid.get(acc.parent_uuid) if acc.parent_uuid else None)
        devices.append({"index": acc.index, "name": acc.name, "mig_profile": acc.mig_profile, "why": why})
    # GPUs without GPM, one note per model and reason: eight alike read as one line, not eight.
    absent: dict[tuple[str, str, str], list[int]] = {}
    for d in devices:
        if d["why"] is not None:
            absent.setdefault((d["name"], d["mig_profile"], d["why"]), []).append(d["index"])
    since, until = range_.get("since"), range_.get("until")
    return {
        "machine": machine.name,
        "devices": devices,
        "absent": [
            {
                "gpus": indices,
                "label": f"GPU {', '.join(map(str, indices))}",
                "name": name,
                "mig_profile": mig,
                "why": why,
            }
            for (name, mig, why), indices in absent.items()
        ],
        "charted": [d["index"] for d in devices if d["why"] is None],
        "config": {
            "seriesUrl": reverse("api:machine_series", kwargs={"name": machine.name}),
            "gpus": [d["index"] for d in devices],
            "metrics": CHART_METRICS,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
        },
    }


def _ranked(now: datetime, machines: QuerySet[Machine] | None = None) -> list[dict[str, Any]]:
    """Every GPU (of ``machines``, else of the fleet) that qualifies, the largest gap first; each row
    with its machine's name and team. Grouped by machine and GPU without joining the machines (the
    join doubled the time of the hour's ~500,000 rollups at 1,000 machines); their names come after."""
    qs = GpuRollup.objects.filter(resolution_s=MINUTE, **window_filter(now - RANKING_SPAN, now, "bucket"))
    if machines is not None:
        qs = qs.filter(machine__in=machines)
    rows = list(
        qs.values("machine_id", "gpu_index")
        .annotate(
            nvml=Avg("util_percent_mean"),
            sm=Avg("sm_util_percent_mean"),
            tensor=Avg("tensor_util_percent_mean"),
            dram=Avg("dram_bw_util_percent_mean"),
            minutes=Count("pk", filter=Q(sm_util_percent_mean__isnull=False)),
        )
        .filter(nvml__gte=BUSY_PERCENT, sm__isnull=False)
        .filter(Q(sm__lt=LOW_SM_PERCENT) | Q(tensor__lt=LOW_TENSOR_PERCENT))
        .order_by()
    )
    owners = {
        pk: (name, team)
        for pk, name, team in Machine.objects.filter(pk__in={r["machine_id"] for r in rows}).values_list(
            "pk", "name", "team_id"
        )
    }
    out = [
        {**r, "machine": owners[r["machine_id"]][0], "team_id": owners[r["machine_id"]][1]}
        for r in rows
        if r["machine_id"] in owners
    ]
    return sorted(out, key=_rank)


def _rank(r: dict[str, Any]) -> tuple:
    return (-(r["nvml"] - r["sm"]), r["machine"], r["gpu_index"])


def _present(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = {
        (a.machine_id, a.index): a.name
        for a in Accelerator.objects.filter(machine_id__in={r["machine_id"] for r in found})
    }
    return [
        {
            "machine": r["machine"],
            "url": reverse("fleet:machine", kwargs={"name": r["machine"]}),
            "gpu_index": r["gpu_index"],
            "name": names.get((r["machine_id"], r["gpu_index"]), ""),
            "nvml_percent": r["nvml"],
            "sm_percent": r["sm"],
            "tensor_percent": r["tensor"],
            "dram_percent": r["dram"],
            "minutes": r["minutes"],
        }
        for r in found
    ]


def busy_but_inefficient(machines: QuerySet[Machine], now: datetime, limit: int = 10) -> list[dict[str, Any]]:
    """GPUs NVML calls busy over the last hour while GPM shows little SM or tensor activity, from
    minute rollups; the largest gap between NVML's figure and SM activity first.

    Each row: machine, url, gpu_index, name, nvml/sm/tensor/dram percent (hour means), minutes.
    GPUs without GPM readings in the hour are left out: nothing says they are inefficient.
    """
    return _present(_ranked(now, machines)[:limit])


# The fleet page's ranking comes from the cache, written by the beat every RANKING_REFRESH_S
# (dashboard.web.tasks.refresh_ranking): ranking the hour's minute rollups of the whole fleet takes
# 0.2-0.4 s of SQL at 1,000 machines (8,000 GPUs x 60 minutes), most of the page's time. It may be
# cached: it is the same for every user (the top GPUs of each team and of the shared pool are kept,
# and a user's top is merged from the teams they see) and it changes slowly (hour means, moved by a
# minute's rollups). Without a fresh entry (no beat, or a cache of its own per process) the page
# ranks inline as before, and never writes the entry, so no request serves another's stale figures.
RANKING_CACHE_KEY = "web:busy-but-inefficient:v1"
RANKING_REFRESH_S = 60
RANKING_STALE_S = 3 * RANKING_REFRESH_S


def refresh_ranking(now: datetime | None = None, limit: int = 10) -> int:
    """Rank the whole fleet and cache each team's top ``limit`` (None: the shared pool) and the
    fleet's; returns how many GPUs qualified."""
    now = now or timezone.now()
    rows = _ranked(now)
    teams: dict[int | None, list[dict[str, Any]]] = {}
    for r in rows:
        top = teams.setdefault(r["team_id"], [])
        if len(top) < limit:
            top.append(r)
    entry = {"at": now.timestamp(), "limit": limit, "all": rows[:limit], "teams": teams}
    cache.set(RANKING_CACHE_KEY, entry, RANKING_STALE_S)
    return len(rows)


def fleet_ranking(teams: set[int] | None, now: datetime, limit: int = 10) -> list[dict[str, Any]]:
    """:func:`busy_but_inefficient` for a user who sees ``teams`` (None: every machine), from the
    beat's cached ranking while it is fresh."""
    entry = cache.get(RANKING_CACHE_KEY)
    if entry is None or entry["limit"] < limit or entry["at"] < now.timestamp() - RANKING_STALE_S:
        machines = None if teams is None else team_access.within_teams(Machine.objects.all(), teams)
        return _present(_ranked(now, machines)[:limit])
    if teams is None:
        return _present(entry["all"][:limit])
    seen = [r for team in (None, *teams) for r in entry["teams"].get(team, [])]
    return _present(sorted(seen, key=_rank)[:limit])
