"""Machines grouped by assembly, compared on measured throughput, energy and money."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from django.db.models import F, FloatField, Sum
from django.db.models.functions import Cast
from django.utils import timezone

from dashboard.fleet.models import GpuSample, Machine
from dashboard.fleet.visibility import only

from . import formulas as f
from .efficiency import period_efficiency
from .hardware import assembly_key, windows
from .roi import machine_roi

DEFAULT_SPAN = timedelta(days=30)
# (column, which way is better)
COLUMNS = (
    ("train_tokens_per_s", max),
    ("serve_tokens_per_s", max),
    ("train_tokens_per_joule", max),
    ("serve_tokens_per_joule", max),
    ("cost_per_million_tokens", min),
    ("roi_percent", max),
)


def _window_joules(machine: Machine, seqs: list[int]) -> dict[int, float]:
    """Accelerator energy (J) of each window: mean power × window length, summed over devices."""
    if not seqs:
        return {}
    rows = (
        GpuSample.objects.filter(machine=machine, seq__in=seqs, power_watts_mean__isnull=False)
        .values("seq")
        .annotate(j=Sum(Cast(F("power_watts_mean"), FloatField()) * F("interval_s")))
        .order_by()
    )
    return {r["seq"]: r["j"] or 0.0 for r in rows}


def machine_throughput(machine: Machine, lo: datetime, hi: datetime) -> dict[str, float]:
    """Tokens, seconds and joules of the windows in which the machine trained, and in which it served."""
    ws = windows(machine, lo, hi)
    joules = _window_joules(machine, [s for s, w in ws.items() if w.generated or w.train])
    out = defaultdict(float)
    for seq, w in ws.items():
        for kind, n in (("train", w.train), ("serve", w.generated)):
            if n:
                out[f"{kind}_tokens"] += n
                out[f"{kind}_seconds"] += w.interval_s
                if seq in joules:
                    out[f"{kind}_joules"] += joules[seq]
                    out[f"{kind}_tokens_metered"] += n
    return out


def comparison(
    since: datetime | None = None,
    until: datetime | None = None,
    idle_below_percent: float = 10.0,
    machine_ids: Collection[int] | None = None,
) -> dict[str, Any]:
    """One row per assembly of the machines of ``machine_ids`` (None: every machine), with the best
    value of each column marked."""
    until = until or timezone.now()
    since = since or until - DEFAULT_SPAN
    groups: dict[str, list[Machine]] = defaultdict(list)
    for m in only(Machine.objects.prefetch_related("accelerators"), machine_ids, "pk").order_by("name"):
        groups[assembly_key(m)].append(m)
    rows = []
    for key, machines in groups.items():
        t: dict[str, float] = defaultdict(float)
        money: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for m in machines:
            for k, v in machine_throughput(m, since, until).items():
                t[k] += v
            r = machine_roi(m, since=since, until=until, idle_below_percent=idle_below_percent)
            tot = r["totals"]
            if tot["cost"] is not None and r["currency"]:
                c = money[r["currency"]]
                c["cost"] += tot["cost"]
                c["value"] += tot["value"] or 0.0
                c["tokens"] += tot["generated_tokens"] + tot["train_tokens"]
                c["priced"] += 1 if tot["value"] is not None else 0
        row: dict[str, Any] = {"assembly": key, "machines": [m.name for m in machines]}
        for kind in ("train", "serve"):
            row[f"{kind}_tokens_per_s"] = t[f"{kind}_tokens"] / t[f"{kind}_seconds"] if t[f"{kind}_seconds"] else None
            row[f"{kind}_tokens_per_joule"] = (
                t[f"{kind}_tokens_metered"] / t[f"{kind}_joules"] if t[f"{kind}_joules"] else None
            )
        eff = period_efficiency(machines, since, until)
        row["mfu_percent"], row["bandwidth_percent"] = eff["mfu_percent"], eff["bandwidth_percent"]
        # Money is compared only within one currency: an assembly priced in two has no single figure.
        if len(money) == 1:
            ((currency, c),) = money.items()
            row["currency"] = currency
            row["cost_per_million_tokens"] = f.cost_per_million_tokens(c["cost"], c["tokens"])
            row["roi_percent"] = f.roi_percent(c["value"], c["cost"]) if c["priced"] else None
        else:
            row["currency"] = ", ".join(sorted(money)) or None
            row["cost_per_million_tokens"] = row["roi_percent"] = None
        rows.append(row)
    _mark_best(rows)
    return {"since": since.isoformat(), "until": until.isoformat(), "assemblies": rows}


def _mark_best(rows: list[dict[str, Any]]) -> None:
    currencies = {r["currency"] for r in rows if r.get("cost_per_million_tokens") is not None}
    for r in rows:
        r["best"] = []
    for column, pick in COLUMNS:
        if column == "cost_per_million_tokens" and len(currencies) > 1:
            continue  # costs in different currencies are not comparable
        values = [r[column] for r in rows if r.get(column) is not None]
        if len(values) < 2:
            continue  # one candidate is not a comparison
        best = pick(values)
        for r in rows:
            if r.get(column) == best:
                r["best"].append(column)
