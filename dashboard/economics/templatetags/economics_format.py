"""Formatting money, energy and rates for people; the numbers stay raw in the API."""

from __future__ import annotations

from datetime import UTC

from django import template

register = template.Library()


@register.filter
def money(value: float | None, currency: str | None = "") -> str:
    """'1,234.56 USD'; '–' when unknown."""
    if value is None:
        return "–"
    return f"{value:,.2f} {currency or ''}".strip()


@register.filter
def num(value: float | None, digits: int = 1) -> str:
    """A number with thousands separators and ``digits`` decimals; '–' when unknown."""
    if value is None:
        return "–"
    return f"{value:,.{int(digits)}f}"


@register.filter
def gb(value: float | None) -> str:
    """Bytes as decimal GB (the unit vendors quote memory in)."""
    if value is None:
        return "–"
    return f"{value / 1e9:,.1f} GB"


@register.filter
def get(mapping: dict, key: str):
    return mapping.get(key) if mapping else None


@register.filter
def when(iso: str | None) -> str:
    """A <time> element from an ISO 8601 string: UTC text without JavaScript; static/js/roi.js shows
    it in the browser's zone."""

    from django.utils.dateparse import parse_datetime
    from django.utils.html import format_html

    moment = parse_datetime(iso) if iso else None
    if moment is None:
        return "–"
    utc = moment.astimezone(UTC)
    return format_html('<time datetime="{}">{} UTC</time>', utc.isoformat(), utc.strftime("%Y-%m-%d %H:%M"))
