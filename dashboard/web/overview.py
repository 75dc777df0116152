"""The fleet page: which machines it shows, in what order, one page at a time, and the fleet's totals.

The whole fleet is read as one lean row per machine, its GPUs' latest figures as ingest summed
them into the machine's state (no ``latest`` document is read), which is enough to count, filter,
sort and total the fleet. Only the page's machines get their inventory, latest values and
sparklines, and their cards' numbers are formatted here so that the template only places strings.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any, NamedTuple
from urllib.parse import quote

from django.conf import settings
from django.db import connection
from django.db.models import Count, F, Sum
from django.http import QueryDict
from django.urls import reverse
from django.utils.http import RFC3986_SUBDELIMS, urlencode
from django.utils.safestring import mark_safe

from dashboard.alerts.models import Alert
from dashboard.core.templatetags.units import ago, binary_bytes, percent
from dashboard.fleet.models import Accelerator, Machine, MachineState, SystemRollup
from dashboard.fleet.queries import SPARKLINE_MINUTES, devices

PAGE_SIZE = 60
STATES = {"all": "All states", "online": "Online", "offline": "Offline", "never": "Never seen"}
SORTS = {
    "problems": "Problems first",
    "name": "Name",
    "busiest": "Busiest GPUs first",
    "idlest": "Idlest GPUs first",
}
HOT_PERCENT = 90


@dataclass(frozen=True)
class Filters:
    """What the toolbar asked for; every field is a GET parameter, so the 10 s refresh keeps them."""

    q: str = ""
    state: str = "all"
    sort: str = "problems"
    page: int = 1

    @classmethod
    def from_query(cls, params: QueryDict) -> Filters:
        state = params.get("state", "")
        sort = params.get("sort", "")
        try:
            page = max(1, int(params.get("page", "1")))
        except ValueError:
            page = 1
        return cls(
            q=params.get("q", "").strip()[:100],
            state=state if state in STATES else cls.state,
            sort=sort if sort in SORTS else cls.sort,
            page=page,
        )

    @property
    def narrowed(self) -> bool:
        return bool(self.q) or self.state != "all"

    def url(self, **changes: Any) -> str:
        """This page's query string with ``changes``, leaving out defaults ('?' alone for none)."""
        chosen = replace(self, **changes)
        pairs = [
            (f, getattr(chosen, f)) for f in ("q", "state", "sort", "page") if getattr(chosen, f) != getattr(Filters, f)
        ]
        return "?" + urlencode(pairs)


class Row(NamedTuple):
    """One machine in the whole-fleet pass: no inventory, no documents."""

    id: int
    name: str
    hostname: str
    last_seen_at: datetime | None
    gpus: int  # devices in its latest sample
    gpu_util_percent: float | None  # mean over those devices
    gpu_mem_used_bytes: float | None
    gpu_mem_total_bytes: float | None
    online: bool
    open_alerts: int


def _rows_sql() -> str:
    """Every machine with its latest sample's GPUs summed (by ingest, into its MachineState).

    On PostgreSQL the last-seen stamp comes as epoch seconds: parsing 1,000 timestamps with their
    time zone was a third of this pass's time."""
    seen = "EXTRACT(EPOCH FROM s.last_seen_at)::float8" if connection.vendor == "postgresql" else "s.last_seen_at"
    return (
        f"SELECT m.id, m.name, m.hostname, {seen}, s.gpu_count, s.gpu_util_percent, s.gpu_mem_used_bytes, "
        f"s.gpu_mem_total_bytes FROM {Machine._meta.db_table} m "
        f"LEFT JOIN {MachineState._meta.db_table} s ON s.machine_id = m.id"
    )


def fleet_rows(now: datetime) -> list[Row]:
    """One lean row per machine, with its online state and open alert count."""
    alerts = dict(
        Alert.objects.filter(resolved_at=None, machine__isnull=False)
        .values("machine_id")
        .annotate(n=Count("id"))
        .order_by()
        .values_list("machine_id", "n")
    )
    online_since = now - timedelta(seconds=settings.OFFLINE_AFTER_S)
    with connection.cursor() as cur:
        cur.execute(_rows_sql())
        raw = cur.fetchall()
    rows = []
    for pk, name, hostname, seen, n, util, used, total in raw:
        if isinstance(seen, float):  # PostgreSQL: epoch seconds
            seen = datetime.fromtimestamp(seen, UTC)
        elif seen is not None and seen.tzinfo is None:  # SQLite stores UTC without an offset
            seen = seen.replace(tzinfo=UTC)
        online = seen is not None and seen >= online_since
        rows.append(Row(pk, name, hostname, seen, n or 0, util, used, total, online, alerts.get(pk, 0)))
    return rows


def _matches(rows: list[Row], filters: Filters) -> list[Row]:
    if filters.state == "online":
        rows = [r for r in rows if r.online]
    elif filters.state == "offline":
        rows = [r for r in rows if not r.online and r.last_seen_at is not None]
    elif filters.state == "never":
        rows = [r for r in rows if r.last_seen_at is None]
    if filters.q:
        needle = filters.q.casefold()
        by_model = set(Accelerator.objects.filter(name__icontains=filters.q).values_list("machine_id", flat=True))
        rows = [r for r in rows if needle in r.name.casefold() or needle in r.hostname.casefold() or r.id in by_model]
    return rows


def _sorted(rows: list[Row], sort: str) -> list[Row]:
    rows = sorted(rows, key=lambda r: r.name)
    if sort == "problems":
        # Machines that went silent first, the most recent loss on top; then machines with open
        # alerts; then enrolled machines whose agent never reported; then the healthy ones.
        def rank(r: Row) -> tuple:
            if r.last_seen_at is not None and not r.online:
                return (0, -r.last_seen_at.timestamp())
            if r.open_alerts:
                return (1, 0.0)
            return (2, 0.0) if r.last_seen_at is None else (3, 0.0)

        return sorted(rows, key=rank)
    if sort in ("busiest", "idlest"):
        # Online machines with GPU figures, ranked; a stale figure from an offline machine is no
        # measure of how busy it is, so those and machines without GPUs follow in name order.
        sign = -1 if sort == "busiest" else 1
        ranked = [r for r in rows if r.online and r.gpu_util_percent is not None]
        rest = [r for r in rows if not (r.online and r.gpu_util_percent is not None)]
        return sorted(ranked, key=lambda r: sign * r.gpu_util_percent) + rest
    return rows


def fleet_totals(rows: list[Row]) -> dict[str, Any]:
    """Counts by state, GPUs by model, and the online GPUs' mean utilisation and memory."""
    online = [r for r in rows if r.online]
    never = sum(1 for r in rows if r.last_seen_at is None)
    reporting = [r for r in online if r.gpus and r.gpu_util_percent is not None]
    gpus = sum(r.gpus for r in reporting)
    util = sum(r.gpu_util_percent * r.gpus for r in reporting) / gpus if gpus else None
    used = sum(r.gpu_mem_used_bytes or 0 for r in online)
    total = sum(r.gpu_mem_total_bytes or 0 for r in online)
    models = list(
        Accelerator.objects.filter(parent_uuid="")  # MIG slices are part of their parent GPU
        .values("name")
        .annotate(n=Count("id"), mem=Sum("mem_total_bytes"))
        .order_by("-n", "name")
    )
    cpu_only = not models
    return {
        **(_cpu_totals(online) if cpu_only else {}),
        "cpu_only": cpu_only,
        "machines": f"{len(rows):,}",
        "online": f"{len(online):,}",
        "offline": f"{len(rows) - len(online) - never:,}",
        "never": f"{never:,}" if never else "",
        "gpu_models": [f"{m['n']:,} × {m['name'].replace('NVIDIA ', '')}" for m in models],
        "gpu_util": percent(util),
        "gpu_util_width": _width(util),
        "gpu_mem": f"{binary_bytes(used)} / {binary_bytes(total)}" if total else "–",
        "gpu_mem_width": _width(100 * used / total if total else None),
    }


def _cpu_totals(online: list[Row]) -> dict[str, Any]:
    """For a fleet without GPUs: the online machines' mean CPU utilisation and RAM, from their latest samples."""
    systems = [
        (latest or {}).get("system") or {}
        for latest in Machine.objects.filter(pk__in=[r.id for r in online]).values_list("state__latest", flat=True)
    ]
    cpus = [s["cpu_percent"] for s in systems if s.get("cpu_percent") is not None]
    cpu = sum(cpus) / len(cpus) if cpus else None
    used = sum(s.get("mem_used_bytes") or 0 for s in systems)
    total = sum(s.get("mem_total_bytes") or 0 for s in systems)
    return {
        "cpu_util": percent(cpu),
        "cpu_util_width": _width(cpu),
        "ram": f"{binary_bytes(used)} / {binary_bytes(total)}" if total else "–",
        "ram_width": _width(100 * used / total if total else None),
    }


def _width(value: float | None) -> str:
    """A bar's CSS width in percent: 0-100 with one decimal, 0 when unknown."""
    if value is None or math.isnan(value):
        return "0.0"
    return f"{max(0.0, min(100.0, value)):.1f}"


def _meter(value: float | None, total: float | None = None) -> dict[str, Any]:
    """A bar: ``value`` in percent, or ``value`` of ``total``."""
    share = value if total is None else (100 * value / total if value is not None and total else None)
    return {"width": _width(share), "hot": share is not None and share > HOT_PERCENT}


def _rounded(values: list[float | None]) -> list[float | None]:
    """Tenths of a percent are finer than a sparkline draws, and a third of the page's bytes."""
    return [None if v is None else round(v, 1) for v in values]


def _machine_urls() -> Callable[[str], str]:
    """``reverse("fleet:machine", kwargs={"name": name})`` without resolving the pattern per card:
    the path up to the name, reversed once, and the name quoted as ``reverse`` quotes it."""
    prefix = reverse("fleet:machine", kwargs={"name": "-"})[:-2]
    return lambda name: f"{prefix}{quote(name, safe=RFC3986_SUBDELIMS + '/~:@')}/"


# One GPU's row in a card's meter grid, as the template's loop wrote it (whitespace included): as
# template nodes the page's 480 rows were two thirds of its cards' template time (~15 of ~22 ms).
GPU_ROW = (
    '\n      <span class="label" title="{name}">{label}</span>'
    '\n      <div class="bar{hot}"><span data-width="{util_width}"></span></div>'
    '\n      <span class="value">{util}</span>'
    '\n      <div class="bar"><span data-width="{mem_width}"></span></div>'
    '\n      <span class="value">{mem}</span>\n      '
)


def _gpu_rows(gpus: list[dict[str, Any]]) -> str:
    """The card's GPU rows as HTML ('' without GPUs): label, utilisation and memory meters."""
    rows = []
    for g in gpus:
        util = _meter(g.get("util_percent"))
        mem_total = g["mem_total_bytes"]
        rows.append(
            GPU_ROW.format(
                name=escape(g["name"]),
                label=f"GPU {int(g['index'])}",
                hot=" hot" if util["hot"] else "",
                util_width=util["width"],
                util=escape(percent(g.get("util_percent"))),
                mem_width=_meter(g.get("mem_used_bytes"), mem_total)["width"],
                mem=escape(f"{binary_bytes(g.get('mem_used_bytes'))} / {binary_bytes(mem_total)}"),
            )
        )
    # The newline and indent the template had between the grid's header and its loop.
    return mark_safe("\n      " + "".join(rows) if rows else "")  # every value above is escaped or a number


def _card(
    m: dict[str, Any], accelerators: list[dict[str, Any]], line: dict | None, row: Row, url: Callable[[str], str]
) -> dict[str, Any]:
    latest = m["latest"] or {}
    system = latest.get("system") or {}
    mem_total = system.get("mem_total_bytes") or m["mem_total_bytes"]
    gpus = devices(accelerators, latest)
    models = Counter(a["name"].replace("NVIDIA ", "") for a in accelerators if not a["parent_uuid"])
    summary = ", ".join(f"{n} × {name}" for name, n in models.items()) or "No accelerators"
    if m["cpu_threads"]:
        summary += f" · {m['cpu_threads']} CPU threads"
    seen = row.last_seen_at
    line = line or {"cpu_percent": [], "gpu_util_percent": []}
    return {
        "name": m["name"],
        "url": url(m["name"]),
        "state": "online" if row.online else "offline",
        "seen": seen is not None,
        "last_seen_ms": int(seen.timestamp() * 1000) if seen else "",
        "last_seen": f"last seen {ago(seen)}" if seen else "no data yet",
        "summary": summary,
        "open_alerts": row.open_alerts,
        "cpu": {**_meter(system.get("cpu_percent")), "text": percent(system.get("cpu_percent"))},
        "ram": {
            **_meter(system.get("mem_used_bytes"), mem_total),
            "text": f"{binary_bytes(system.get('mem_used_bytes'))} / {binary_bytes(mem_total)}",
        },
        "gpu_rows": _gpu_rows(gpus),
        "sparkline_json": json.dumps(
            {"cpu": _rounded(line["cpu_percent"]), "gpu": _rounded(line["gpu_util_percent"]) if accelerators else []}
        ),
    }


def sparklines(ids: list[int], now: datetime) -> dict[int, dict[str, list]]:
    """``queries.sparklines`` for the cards, less what they do not draw: per machine the last hour's
    minute means of CPU % and of GPU utilisation averaged over devices, in bucket order. One query
    on the system rollups, whose GPU mean the rollups wrote (``rollup.gpu_means``): averaging the
    GPU rollups here read 28,800 rows for 60 machines (8 GPUs x 60 minutes), most of the page's
    SQL. No bucket stamps: parsing 7,200 of them was a third of the page's Python."""
    since = connection.ops.adapt_datetimefield_value(now - timedelta(minutes=SPARKLINE_MINUTES))
    marks = ", ".join(["%s"] * len(ids))
    sql = (
        f"SELECT machine_id, cpu_percent_mean, gpu_util_percent_mean FROM {SystemRollup._meta.db_table} "
        f"WHERE machine_id IN ({marks}) AND resolution_s = 60 AND bucket >= %s ORDER BY machine_id, bucket"
    )
    out: dict[int, dict[str, list]] = {}
    with connection.cursor() as cur:
        cur.execute(sql, [*ids, since])
        for machine_id, cpu, gpu in cur.fetchall():
            line = out.get(machine_id)
            if line is None:
                line = out[machine_id] = {"cpu_percent": [], "gpu_util_percent": []}
            line["cpu_percent"].append(cpu)
            line["gpu_util_percent"].append(gpu)
    return out


def machine_cards(rows: list[Row], now: datetime) -> list[dict[str, Any]]:
    """Display-ready cards for ``rows`` (one page), in their order: three queries whatever the count."""
    ids = [r.id for r in rows]
    machines = {
        m["id"]: m
        for m in Machine.objects.filter(pk__in=ids).values(
            "id", "name", "cpu_threads", "mem_total_bytes", latest=F("state__latest")
        )
    }
    accelerators: dict[int, list[dict[str, Any]]] = {pk: [] for pk in ids}
    for a in (
        Accelerator.objects.filter(machine_id__in=ids)
        .order_by("machine_id", "index")
        .values("machine_id", "index", "name", "mem_total_bytes", "parent_uuid")
    ):
        accelerators[a["machine_id"]].append(a)
    lines = sparklines(ids, now) if ids else {}
    url = _machine_urls()
    return [_card(machines[r.id], accelerators[r.id], lines.get(r.id), r, url) for r in rows if r.id in machines]


def _pages(filters: Filters, count: int) -> list[dict[str, Any] | None]:
    """Links to the first, last and nearby pages; None where a run of pages is left out."""
    last = max(1, math.ceil(count / PAGE_SIZE))
    shown = sorted({1, last, *range(max(1, filters.page - 2), min(last, filters.page + 2) + 1)})
    out: list[dict[str, Any] | None] = []
    for i, n in enumerate(shown):
        if i and n - shown[i - 1] > 1:
            out.append(None)
        out.append({"number": n, "url": filters.url(page=n), "current": n == filters.page})
    return out


def fleet_page(filters: Filters, now: datetime, visible: set[int] | None = None) -> dict[str, Any]:
    """Everything the fleet page shows for ``filters``: totals, the count line, page links, cards;
    ``visible`` (machine ids) narrows the fleet to what the user's teams may see."""
    rows = [r for r in fleet_rows(now) if visible is None or r.id in visible]
    chosen = _sorted(_matches(rows, filters), filters.sort)
    last = max(1, math.ceil(len(chosen) / PAGE_SIZE))
    filters = replace(filters, page=min(filters.page, last))
    start = (filters.page - 1) * PAGE_SIZE
    on_page = chosen[start : start + PAGE_SIZE]
    noun = "machine" if len(chosen) == 1 else "machines"
    if on_page:
        shown = f"{start + 1:,}–{start + len(on_page):,} of {len(chosen):,} {noun}"
    else:
        shown = f"0 of {len(rows):,} machines"
    return {
        "filters": filters,
        "fleet_size": len(rows),
        "totals": fleet_totals(rows),
        "shown": shown + (" matching" if filters.narrowed and on_page else ""),
        "pages": _pages(filters, len(chosen)) if len(chosen) > PAGE_SIZE else [],
        "previous_url": filters.url(page=filters.page - 1) if filters.page > 1 else None,
        "next_url": filters.url(page=filters.page + 1) if filters.page < last else None,
        "machines": machine_cards(on_page, now),
        "state_urls": {state: filters.url(state=state, page=1) for state in STATES},
        "clear_url": filters.url(q="", state="all", page=1),
    }
