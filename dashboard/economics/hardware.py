"""What a machine is made of and what it produced: the reads that roi, capacity, assemblies and share need."""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Sum

from dashboard.fleet import throughput
from dashboard.fleet.models import Accelerator, Machine
from dashboard.jobs import throughput as job_throughput
from dashboard.jobs.models import Job, JobAttempt

from . import catalogue
from .models import HardwareSpec


def physical(accelerators: list[Accelerator]) -> list[Accelerator]:
    """The whole devices: a MIG slice is part of its parent GPU."""
    return [a for a in accelerators if not a.parent_uuid]


def short_name(name: str) -> str:
    return name.replace("NVIDIA ", "").strip()


def assembly_key(machine: Machine, accelerators: list[Accelerator] | None = None) -> str:
    """'4 × H100 80GB HBM3 · 256 GiB RAM': accelerator models and counts, and host memory to the GiB."""
    accs = physical(list(machine.accelerators.all()) if accelerators is None else accelerators)
    counts = Counter(short_name(a.name) for a in accs)
    devices = ", ".join(f"{n} × {name}" for name, n in sorted(counts.items())) or "no accelerators"
    ram = f"{round(machine.mem_total_bytes / 2**30)} GiB RAM" if machine.mem_total_bytes else "RAM unknown"
    return f"{devices} · {ram}"


def all_specs() -> list[HardwareSpec]:
    return list(HardwareSpec.objects.all())


def spec_for(name: str, specs: list[HardwareSpec]) -> HardwareSpec | None:
    return catalogue.match(name, specs)


# --- model size and precision from a job's name and command ----------------------------------

# "llama-3.1-8b-instruct", "Llama-2-70B", "qwen2.5-1.5b": a number followed by b/B and no letter.
# A number after 'x' is skipped: "8x7b" is a mixture of experts whose size is not 7B.
_SIZE = re.compile(r"(?<![\d.x])(\d+(?:\.\d+)?)\s?b(?![a-z])", re.IGNORECASE)
_INT4 = re.compile(r"int4|4-?bit|\bq4|awq|gptq|nf4", re.IGNORECASE)
_INT8 = re.compile(r"int8|8-?bit|\bq8|fp8", re.IGNORECASE)


def job_text(job: Job) -> str:
    return f"{job.name} {job.command_display}"


def parse_params_b(text: str) -> float | None:
    """Billions of parameters named in ``text`` ('7b', '70B', '1.5b'); None when none is named."""
    for m in _SIZE.finditer(text):
        value = float(m[1])
        if 0 < value <= 2000:
            return value
    return None


def parse_precision(text: str) -> str:
    """The serving precision named in ``text``: int4, int8 (fp8 has the same size), else fp16."""
    if _INT4.search(text):
        return "int4"
    if _INT8.search(text):
        return "int8"
    return "fp16"


@dataclass(frozen=True)
class JobModel:
    """The model a job ran: each figure from the job's own fields, else read from its name and command."""

    params_b: float | None  # billions of parameters; None when neither the job nor its name says
    precision: str  # a key of formulas.BYTES_PER_PARAM
    context_tokens: int | None  # None: the job did not say
    params_source: str  # "job" (its model_params_b field) or "name" (parsed from name and command)
    precision_source: str  # "job" or "name"


def job_model(job: Job) -> JobModel:
    text = job_text(job)
    params_b = job.model_params_b or parse_params_b(text)
    return JobModel(
        params_b=params_b,
        precision=job.precision or parse_precision(text),
        context_tokens=job.context_tokens,
        params_source="job" if job.model_params_b else "name",
        precision_source="job" if job.precision else "name",
    )


def parse_train_method(text: str) -> str:
    lowered = text.lower()
    if "qlora" in lowered:
        return "qlora"
    if "lora" in lowered:
        return "lora"
    return "full"


# --- tokens per window -----------------------------------------------------------------------


@dataclass
class Window:
    """One agent window of a machine: tokens from every job in it."""

    seq: int
    ts: datetime  # end of the window
    interval_s: float
    generated: int = 0
    train: int = 0
    prompt: int = 0
    jobs: set[int] = field(default_factory=set)


def windows(machine: Machine, lo: datetime, hi: datetime) -> dict[int, Window]:
    """Windows with tokens stamped in ``[lo, hi)``, by seq: per job the best source, jobs summed."""
    out: dict[int, Window] = {}
    for t in throughput.window_tokens(throughput.machine_rows(machine, lo, hi)):
        w = out.setdefault(t.seq, Window(t.seq, t.ts, t.interval_s))
        w.generated += t.generated
        w.train += t.train
        w.prompt += t.prompt
        if t.job_key:
            w.jobs.add(t.job_key)
    return out


def job_rates(jobs: list[Job]) -> dict[int, dict[str, float]]:
    """Per job: generated and training tokens/s over the windows it reported, from its best source."""
    rows = (
        job_throughput.rows_of([j.pk for j in jobs])
        .values("job_key", "source")
        .annotate(g=Sum("generated_tokens"), t=Sum("train_tokens"), s=Sum("interval_s"))
        .order_by()
    )
    best: dict[int, dict[str, float]] = {}
    for r in rows:
        if not r["s"]:
            continue
        current = best.get(r["job_key"])
        tokens = (r["g"] or 0) + (r["t"] or 0)
        if current is None or tokens > current["tokens"]:
            best[r["job_key"]] = {
                "tokens": tokens,
                "generated_per_s": (r["g"] or 0) / r["s"],
                "train_per_s": (r["t"] or 0) / r["s"],
                "seconds": r["s"],
            }
    return best


def attempts(machine: Machine, lo: datetime, hi: datetime) -> list[JobAttempt]:
    """Attempts that ran on ``machine`` at some time between ``lo`` and ``hi``, with their jobs."""
    return list(
        JobAttempt.objects.filter(machine=machine, started_at__isnull=False, started_at__lt=hi)
        .exclude(ended_at__lte=lo)
        .select_related("job")
        .order_by("started_at")
    )


def kinds_by_window(spans: list[JobAttempt], ws: dict[int, Window], now: datetime) -> dict[int, set[str]]:
    """Per window seq, the kinds of job that ran on the machine during it."""
    # Per kind, its attempts' times merged where they overlap, in order: a window ran a kind when
    # the last merged span starting before the window's end ends after its start.
    merged: dict[str, tuple[list[float], list[float]]] = {}
    by_kind: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for a in spans:
        by_kind[a.job.kind].append((a.started_at.timestamp(), (a.ended_at or now).timestamp()))
    for kind, times in by_kind.items():
        starts: list[float] = []
        ends: list[float] = []
        for a_start, a_end in sorted(times):
            if starts and a_start < ends[-1]:
                ends[-1] = max(ends[-1], a_end)
            else:
                starts.append(a_start)
                ends.append(a_end)
        merged[kind] = (starts, ends)
    out: dict[int, set[str]] = defaultdict(set)
    for seq, w in ws.items():
        end = w.ts.timestamp()
        start = end - w.interval_s
        for kind, (starts, ends) in merged.items():
            i = bisect_left(starts, end) - 1
            if i >= 0 and ends[i] > start:
                out[seq].add(kind)
    return out
