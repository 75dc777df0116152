"""How much of its hardware a job used: model FLOPs utilisation (MFU) for training, the share of
the memory-bandwidth bound for serving. Peaks come from the hardware catalogue, with its sources.

MFU = 6 × parameters × training tokens/s ÷ the GPUs' peak dense FLOP/s at the job's precision
(6: forward and backward FLOPs per parameter per token, formulas.TRAIN_FLOPS_PER_PARAM["full"]; MFU
counts the model's FLOPs whatever the method, so LoRA's skipped weight gradients are not credited).
Serving efficiency = decode tokens/s ÷ the bound capacity.py shows (one sequence, weights and its
KV cache read once per token)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from django.utils import timezone

from dashboard.fleet.models import Accelerator, Machine
from dashboard.jobs.models import Job, JobAttempt

from . import formulas as f
from .capacity import DEFAULT_CONTEXT_TOKENS
from .hardware import all_specs, job_model, job_rates, spec_for
from .models import HardwareSpec

# The catalogue's bf16_tflops column is the dense FP16/BF16 tensor peak; other precisions have none.
CATALOGUE_PRECISIONS = {"bf16", "fp16"}


def mfu_percent(params_b: float, tokens_per_s: float, peak_tflops: float) -> float | None:
    """Model FLOPs utilisation in %: 6 × params_b·10⁹ × tokens_per_s ÷ peak_tflops·10¹²; None without a peak."""
    if peak_tflops <= 0:
        return None
    return f.TRAIN_FLOPS_PER_PARAM["full"] * params_b * 1e9 * tokens_per_s / (peak_tflops * 1e12) * 100.0


def _devices(job: Job, accs: list[Accelerator] | None = None) -> list[Accelerator]:
    """The whole GPUs behind the job's devices (a MIG device's parent: the catalogue lists boards);
    ``accs``: the accelerators of the job's machine, when read already."""
    if job.machine_id is None or not job.assigned_gpus:
        return []
    if accs is None:
        accs = list(Accelerator.objects.filter(machine_id=job.machine_id))
    by_index = {a.index: a for a in accs}
    by_uuid = {a.uuid: a for a in accs if a.uuid}
    found: dict[int, Accelerator] = {}
    for index in job.assigned_gpus:
        acc = by_index.get(index)
        if acc is not None and acc.parent_uuid:
            acc = by_uuid.get(acc.parent_uuid, acc)
        if acc is not None:
            found[acc.pk] = acc
    return list(found.values())


_UNREAD: Any = object()


def job_efficiency(
    job: Job,
    rate: dict[str, float] | None = _UNREAD,
    specs: list[HardwareSpec] | None = None,
    accs: list[Accelerator] | None = None,
) -> dict[str, Any]:
    """MFU (training) or bandwidth efficiency (serving) of a job, with the figures and sources used;
    ``why`` says what is missing when the answer is None. ``rate`` (``job_rates``' entry, None: no
    tokens), ``specs`` and ``accs`` (its machine's accelerators): when read already for many jobs."""
    model = job_model(job)
    if rate is _UNREAD:
        rate = job_rates([job]).get(job.pk)
    specs = all_specs() if specs is None else specs
    devices = _devices(job, accs)
    matched = [(a, spec_for(a.name, specs)) for a in devices]
    out: dict[str, Any] = {
        "kind": job.kind,
        "params_b": model.params_b,
        "params_source": model.params_source,
        "precision": job.precision or model.precision,
        "gpus": [a.name for a in devices],
        "sources": sorted({s.source_url for _, s in matched if s and s.source_url}),
        "tokens_per_s": None,
        "percent": None,
        "why": "",
    }
    if model.params_b is None:
        out["why"] = "the job states no model size (model_params_b) and its name does not say"
        return out
    if rate is None:
        out["why"] = "no tokens counted for this job yet"
        return out
    if not devices:
        out["why"] = "the job holds no GPU"
        return out
    if any(s is None for _, s in matched):
        out["why"] = "a GPU of the job is not in the hardware catalogue"
        return out
    if job.kind == Job.Kind.TRAIN:
        out["tokens_per_s"] = rate["train_per_s"]
        if out["precision"] not in CATALOGUE_PRECISIONS:
            out["why"] = f"the catalogue has dense FP16/BF16 peaks only, none for {out['precision']}"
            return out
        peaks = [s.bf16_tflops for _, s in matched]
        if any(p is None for p in peaks):
            out["why"] = "the catalogue has no dense FP16/BF16 peak for a GPU of the job"
            return out
        out["peak_tflops"] = sum(peaks)
        out["percent"] = mfu_percent(model.params_b, rate["train_per_s"], out["peak_tflops"])
        return out
    out["tokens_per_s"] = rate["generated_per_s"]
    bandwidths = [s.bandwidth_gb_s for _, s in matched]
    if any(b is None for b in bandwidths):
        out["why"] = "the catalogue has no memory bandwidth for a GPU of the job"
        return out
    precision = model.precision if model.precision in f.BYTES_PER_PARAM else "fp16"
    arch = f.size_class_for(model.params_b)
    context = model.context_tokens or DEFAULT_CONTEXT_TOKENS
    kv = f.kv_cache_bytes(arch.layers, arch.kv_heads, arch.head_dim, context, 1)
    bound = f.decode_bound_tokens_per_s(sum(bandwidths), f.weights_bytes(model.params_b, precision), kv, 1)
    out.update(bandwidth_gb_s=sum(bandwidths), bound_tokens_per_s=bound, context_tokens=context)
    out["percent"] = f.efficiency_percent(rate["generated_per_s"], bound)
    return out


def period_efficiency(
    machines: list[Machine], start: datetime, end: datetime, now: datetime | None = None
) -> dict[str, Any]:
    """Mean MFU of the training jobs and mean bandwidth efficiency of the serving jobs that ran on
    ``machines`` in ``[start, end)``, each job weighted by the time its attempts ran there in the
    period (a running one until ``now``). Each job's figure is :func:`job_efficiency`'s.

    Returns ``mfu_percent`` / ``bandwidth_percent`` (None when no job of that kind has a figure),
    with the jobs and hours behind each (``*_jobs``, ``*_hours``) and the jobs without a figure
    (``*_unknown``: no model size, no tokens, a GPU not in the catalogue)."""
    now = now or timezone.now()
    seconds: dict[int, float] = defaultdict(float)
    jobs: dict[int, Job] = {}
    attempts = (
        JobAttempt.objects.filter(machine__in=machines, started_at__isnull=False, started_at__lt=end)
        .exclude(ended_at__lte=start)
        .select_related("job")
    )
    for a in attempts:
        ran = (min(end, a.ended_at or now) - max(start, a.started_at)).total_seconds()
        if ran > 0:
            seconds[a.job_id] += ran
            jobs[a.job_id] = a.job
    # Read once for every job: their token rates, the catalogue, their machines' accelerators.
    rates = job_rates(list(jobs.values())) if jobs else {}
    specs = all_specs() if jobs else []
    accs: dict[int, list[Accelerator]] = defaultdict(list)
    machine_ids = {j.machine_id for j in jobs.values() if j.machine_id is not None and j.assigned_gpus}
    for a in Accelerator.objects.filter(machine_id__in=machine_ids) if machine_ids else ():
        accs[a.machine_id].append(a)
    out: dict[str, Any] = {}
    for prefix, kind in (("mfu", Job.Kind.TRAIN), ("bandwidth", Job.Kind.SERVE)):
        known: list[tuple[float, float]] = []  # (percent, seconds)
        unknown = 0
        for job_id, job in jobs.items():
            if job.kind != kind:
                continue
            percent = job_efficiency(job, rates.get(job_id), specs, accs[job.machine_id])["percent"]
            if percent is None:
                unknown += 1
            else:
                known.append((percent, seconds[job_id]))
        weight = sum(s for _, s in known)
        out[f"{prefix}_percent"] = sum(p * s for p, s in known) / weight if weight else None
        out[f"{prefix}_jobs"] = len(known)
        out[f"{prefix}_hours"] = weight / 3600
        out[f"{prefix}_unknown"] = unknown
    return out
