"""``{% job_efficiency job as eff %}``: MFU or bandwidth efficiency for any page that shows a job
(templates load it, so the jobs app needs no import of economics)."""

from __future__ import annotations

from typing import Any

from django import template

from dashboard.economics.efficiency import job_efficiency as compute

register = template.Library()


@register.simple_tag
def job_efficiency(job: Any) -> dict[str, Any]:
    return compute(job)
