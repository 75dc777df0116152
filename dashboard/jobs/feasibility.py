"""Whether a job could ever be placed, and where it could start now: asked before a job is queued.

Placement (``placement.py``) decides where a queued job goes from free memory; this module answers
the question before that, from what the fleet *has*: a job asking for GPUs no machine owns waits
forever, so the API and the form refuse it with the reason. Only what the fleet reported counts:
a machine whose agent has not sent its inventory yet might have anything, so it never causes a
refusal (the job waits for it).

Each function takes ``machine_ids``, the machines the asking user may see (None: every machine):
another team's machine is never named, and naming one reads as naming no machine at all.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable

from django.db.models import Prefetch

from dashboard.fleet.models import Accelerator, Machine
from dashboard.fleet.queries import devices
from dashboard.fleet.visibility import only

from .models import Job, describe_need
from .placement import GIB, capacity, choose_gpus


def gpu_sizes(machine: Machine) -> list[float] | None:
    """Memory of each GPU placement can hand out on ``machine``, in bytes; None while unknown.

    A GPU split into MIG devices is handed out through its devices, as placement does; one whose
    memory was never reported counts as large enough for anything (nothing is known against it).
    """
    if machine.last_seen_at is None:
        return None
    accelerators = list(machine.accelerators.all())
    parents = {a.parent_uuid for a in accelerators if a.parent_uuid}
    return [
        float(d["mem_total_bytes"]) if d.get("mem_total_bytes") else math.inf
        for d in devices(accelerators, machine.latest)
        if not (d.get("uuid") and d["uuid"] in parents)
    ]


def _fits(sizes: list[float], gpus: int, gpu_memory_gb: float) -> bool:
    return sum(1 for s in sizes if s >= gpu_memory_gb * GIB) >= gpus


def _describe(sizes: list[float]) -> str:
    """'no GPUs', '1 GPU of 24 GiB', '8 GPUs of 79.6 GiB', '2 GPUs (79.6, 40 GiB)'."""
    if not sizes:
        return "no GPUs"
    gib = sorted({round(s / GIB, 1) for s in sizes if math.isfinite(s)}, reverse=True)
    count = f"{len(sizes)} GPU{'s' if len(sizes) != 1 else ''}"
    if not gib:
        return count
    if len(gib) == 1:
        return f"{count} of {gib[0]:g} GiB"
    return f"{count} ({', '.join(f'{g:g}' for g in gib)} GiB)"


def _machines(name: str | None, machine_ids: Collection[int] | None = None) -> Iterable[Machine]:
    qs = Machine.objects.select_related("state").prefetch_related(
        Prefetch("accelerators", queryset=Accelerator.objects.order_by("index"))
    )
    qs = only(qs, machine_ids, "pk")
    return qs.filter(name=name) if name else qs.order_by("name")


def refusal(
    gpus: int, gpu_memory_gb: float, machine: str | None = None, machine_ids: Collection[int] | None = None
) -> tuple[str, str] | None:
    """``(field, sentence)`` when no machine could ever take the job, else None."""
    if machine:
        target = next(iter(_machines(machine, machine_ids)), None)
        if target is None:
            return "machine", f"no machine named {machine!r}"
        sizes = gpu_sizes(target)
        if sizes is None or _fits(sizes, gpus, gpu_memory_gb):
            return None
        field = "gpus" if len(sizes) < gpus else "gpu_memory_gb"
        if not sizes:
            return field, f"{target.name} has no GPUs: ask for 0 GPUs, or choose another machine"
        return field, f"{target.name} has {_describe(sizes)}; the job asks for {describe_need(gpus, gpu_memory_gb)}"
    if gpus == 0:
        return None
    known = [(m, gpu_sizes(m)) for m in _machines(None)]
    if not known or any(sizes is None for _, sizes in known):
        return None  # no fleet yet, or a machine whose inventory has not arrived: it may fit there
    if any(_fits(sizes, gpus, gpu_memory_gb) for _, sizes in known if sizes is not None):
        return None
    # Whether it could ever run is the whole fleet's question (placement lends a preemptible job
    # another team's idle machine), but the sentence names only a machine the user may see.
    biggest = max(known, key=_size)
    field = "gpus" if all(len(sizes or []) < gpus for _, sizes in known) else "gpu_memory_gb"
    if not biggest[1]:
        return field, "no machine in the fleet has a GPU: ask for 0 GPUs to run on a CPU"
    none_has = f"no machine in the fleet has {describe_need(gpus, gpu_memory_gb)}"
    if machine_ids is None or biggest[0].pk in machine_ids:
        return field, f"{none_has}; the largest is {biggest[0].name} with {_describe(biggest[1])}"
    seen = [ms for ms in known if ms[0].pk in machine_ids and ms[1]]
    if not seen:
        return field, none_has
    largest = max(seen, key=_size)
    return field, f"{none_has}; the largest you can see is {largest[0].name} with {_describe(largest[1] or [])}"


def _size(known: tuple[Machine, list[float] | None]) -> tuple[int, float]:
    return len(known[1] or []), max(known[1] or [0])


def ready_now(
    gpus: int,
    gpu_memory_gb: float,
    kind: str = "train",
    machine: str | None = None,
    machine_ids: Collection[int] | None = None,
) -> list[str]:
    """Names of the online machines (of ``machine_ids``) where such a job would be placed at once, by name."""
    probe = Job(gpus=gpus, gpu_memory_gb=gpu_memory_gb, kind=kind)
    candidates = [m for m in _machines(machine, machine_ids) if m.is_online()]
    active: dict[int, list[Job]] = {}
    for job in Job.objects.filter(status__in=Job.ACTIVE, machine__in=candidates):
        active.setdefault(job.machine_id, []).append(job)
    return [m.name for m in candidates if choose_gpus(probe, capacity(m, active.get(m.pk, []))) is not None]


def gpu_counts(machine_ids: Collection[int] | None = None) -> dict[str, int | None]:
    """GPUs per machine name (None while its inventory is unknown): what templates are sized to."""
    return {m.name: (None if (sizes := gpu_sizes(m)) is None else len(sizes)) for m in _machines(None, machine_ids)}
