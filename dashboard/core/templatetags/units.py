"""Formatting for people, in templates and page code only: stored and sent numbers stay raw, with
their unit in their name (``mem_used_bytes``)."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone

register = template.Library()

_BYTE_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


@register.filter
def binary_bytes(value: float | None) -> str:
    """1.5 GiB style; '–' when unknown."""
    if value is None:
        return "–"
    for unit, size in _BYTE_UNITS:
        if abs(value) >= size:
            scaled = value / size
            return f"{scaled:.0f} {unit}" if scaled >= 100 else f"{scaled:.1f} {unit}"
    return f"{value:.0f} B"


@register.filter
def ago(moment: datetime | None) -> str:
    """'12 s ago', '3 min ago', '2 h ago', '4 d ago' (static/js/charts.js says the same)."""
    if moment is None:
        return "never"
    s = max(0, round((timezone.now() - moment).total_seconds()))
    if s < 90:
        return f"{s} s ago"
    if s < 5400:
        return f"{round(s / 60)} min ago"
    if s < 129600:
        return f"{round(s / 3600)} h ago"
    return f"{round(s / 86400)} d ago"


@register.filter
def epoch_ms(moment: datetime | None) -> int | str:
    return "" if moment is None else int(moment.timestamp() * 1000)


@register.filter
def percent(value: float | None) -> str:
    """'42 %'; '–' when unknown."""
    return "–" if value is None else f"{value:.0f} %"


_SI_PREFIXES = (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))


@register.filter
def si(value: float | None, unit: str = "") -> str:
    """'1.23 k tokens/s': three significant digits and a k/M/G/T prefix; '—' when unknown.

    static/js/throughput.js formats numbers the same way.
    """
    if value is None:
        return "—"
    rounded = float(f"{float(value):.3g}")  # 999.6 becomes 1000 before the prefix is chosen
    if rounded == 0:
        text = "0"
    elif abs(rounded) < 0.001:
        text = "< 0.001"
    else:
        text = f"{rounded:.3g}"
        for prefix, size in _SI_PREFIXES:
            if abs(rounded) >= size:
                text = f"{rounded / size:.3g} {prefix}"
                break
    return f"{text} {unit}" if unit else text


_KIND_ORDER = ("train", "prompt", "generated")
_KIND_LABELS = {"train": "Training tokens", "prompt": "Prompt tokens", "generated": "Generated tokens"}


@register.filter
def throughput_rows(summary: dict | None) -> list[dict]:
    """A throughput summary ({kind: {...}}, as the API gives it) as labelled rows in chart order."""
    summary = summary or {}
    return [{"kind": k, "label": _KIND_LABELS[k], **summary[k]} for k in _KIND_ORDER if k in summary]


@register.filter
def any_tokens(summary: dict | None) -> bool:
    return any(s["total_tokens"] for s in (summary or {}).values())
