"""What the machine page shows of jobs (the fleet app's view calls this with one line)."""

from __future__ import annotations

from typing import Any

from .models import Job


def machine_jobs(name: str, recent: int = 10) -> dict[str, Any]:
    """The jobs running on machine ``name`` now, and the last ``recent`` others it ran."""
    on_machine = Job.objects.filter(machine__name=name).select_related("owner").order_by("-created_at", "-pk")
    return {
        "active": list(on_machine.filter(status__in=Job.ACTIVE)),
        "recent": list(on_machine.exclude(status__in=Job.ACTIVE)[:recent]),
    }
