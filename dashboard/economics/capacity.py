"""Which model sizes a machine can serve and train, and how fast decode can go at best."""

from __future__ import annotations

from collections import Counter
from typing import Any

from dashboard.fleet.models import Machine
from dashboard.jobs.models import Job

from . import formulas as f
from . import planner
from .hardware import all_specs, job_model, job_rates, job_text, parse_train_method, physical, short_name, spec_for

DEFAULT_CONTEXT_TOKENS = 4096
DEFAULT_BATCH = 1
PRECISIONS = ("fp16", "int8", "int4")
TRAIN_METHODS = ("full", "lora", "qlora")

ASSUMPTIONS = {
    "bytes_per_param": f.BYTES_PER_PARAM,
    "kv_cache": "2 (K and V) × layers × KV heads × head dim × context × batch × 2 bytes (fp16 cache)",
    "train_bytes_per_param": {
        "full": "16: fp16 weights 2 + fp16 gradients 2 + fp32 master weights 4 + Adam moments 4 + 4",
        "lora": f"{f.LORA_BYTES_PER_PARAM:.2f}: frozen bf16 base 2 + adapters of 1 % of the parameters at 16 bytes",
        "qlora": f"{f.QLORA_BYTES_PER_PARAM:.2f}: 4-bit NF4 base (4.127 bits with its constants) + the same adapters",
    },
    "activations": "not counted: gradient checkpointing keeps them small; the usable fraction leaves room",
    "usable_memory_fraction": f.USABLE_MEMORY_FRACTION,
    "usable_memory_fraction_apple": f.USABLE_MEMORY_FRACTION_APPLE,
    "multi_gpu": "a model may span all the machine's GPUs (tensor parallel or FSDP), so memory and bandwidth add up",
    "decode_bound": "batch × bandwidth / (weight bytes + batch × KV bytes of one sequence)",
    "model_size_of_jobs": "the job's model_params_b and precision where it gives them, else read from its name and "
    "command ('7b', '70B', 'int4'); jobs with no size either way are not shown",
    "context_of_jobs": "a measured job's own context_tokens where it gives one, else the page's context",
}


def _hardware(machine: Machine) -> dict[str, Any]:
    specs = all_specs()
    accs = physical(list(machine.accelerators.all()))
    memory = 0.0
    bandwidth: float | None = 0.0
    devices = []
    apple = False
    for a in accs:
        spec = spec_for(a.name, specs)
        apple = apple or a.vendor == "apple"
        # The memory the agent measured beats a catalogue figure (an M2 Ultra comes with 64 to 192 GB).
        mem = a.mem_total_bytes or (spec.memory_gb * 1e9 if spec and spec.memory_gb else None)
        memory += mem or 0
        if bandwidth is not None:
            bandwidth = bandwidth + spec.bandwidth_gb_s if spec and spec.bandwidth_gb_s else None
        devices.append(
            {
                "index": a.index,
                "name": a.name,
                "memory_bytes": mem,
                "spec": spec.name if spec else None,
                "bandwidth_gb_s": spec.bandwidth_gb_s if spec else None,
                "source": spec.source_url if spec else None,
            }
        )
    return {
        "devices": devices,
        "memory_bytes": memory or None,
        "bandwidth_gb_s": bandwidth if devices else None,
        "usable_fraction": f.USABLE_MEMORY_FRACTION_APPLE if apple else f.USABLE_MEMORY_FRACTION,
    }


def _measured(machine: Machine, context_tokens: int, batch: int, bandwidth: float | None) -> dict[str, list[dict]]:
    """Jobs that ran on the machine with a known model size, by size class label."""
    sized = [
        (j, m)
        for j in Job.objects.filter(machine=machine).order_by("-created_at")[:500]
        if (m := job_model(j)).params_b
    ]
    rates = job_rates([j for j, _ in sized])
    out: dict[str, list[dict]] = {}
    for job, model in sized:
        rate = rates.get(job.pk)
        if rate is None or model.params_b is None:
            continue
        arch = f.size_class_for(model.params_b)
        row: dict[str, Any] = {
            "job_id": job.pk,
            "job_name": job.name,
            "kind": job.kind,
            "params_b": model.params_b,
            "params_source": model.params_source,
        }
        if job.kind == Job.Kind.SERVE:
            context = model.context_tokens or context_tokens
            row.update(
                precision=model.precision,
                precision_source=model.precision_source,
                context_tokens=context,
                tokens_per_s=rate["generated_per_s"],
            )
            if bandwidth:
                kv = f.kv_cache_bytes(arch.layers, arch.kv_heads, arch.head_dim, context, 1)
                bound = f.decode_bound_tokens_per_s(
                    bandwidth, f.weights_bytes(model.params_b, model.precision), kv, batch
                )
                row["bound_tokens_per_s"] = bound
                row["efficiency_percent"] = f.efficiency_percent(rate["generated_per_s"], bound)
        else:
            row["method"] = parse_train_method(job_text(job))
            row["tokens_per_s"] = rate["train_per_s"]
        out.setdefault(arch.label, []).append(row)
    return out


def machine_capacity(
    machine: Machine, context_tokens: int = DEFAULT_CONTEXT_TOKENS, batch: int = DEFAULT_BATCH
) -> dict[str, Any]:
    """Per size class: fits for serving at each precision and training by each method, the decode
    bound, and measured rates of jobs of that size."""
    hw = _hardware(machine)
    memory = hw["memory_bytes"]
    bandwidth = hw["bandwidth_gb_s"]
    measured = _measured(machine, context_tokens, batch, bandwidth)
    rows = []
    for arch in f.SIZE_CLASSES:
        kv = f.kv_cache_bytes(arch.layers, arch.kv_heads, arch.head_dim, context_tokens, 1)
        serve = {}
        for p in PRECISIONS:
            need = f.serve_bytes(arch, p, context_tokens, batch)
            serve[p] = {
                "needed_bytes": need,
                "fits": f.fits(need, memory, hw["usable_fraction"]) if memory else None,
                "bound_tokens_per_s": (
                    f.decode_bound_tokens_per_s(bandwidth, f.weights_bytes(arch.params_b, p), kv, batch)
                    if bandwidth
                    else None
                ),
            }
        train = {}
        for m in TRAIN_METHODS:
            need = f.train_bytes(arch.params_b, m)
            train[m] = {"needed_bytes": need, "fits": f.fits(need, memory, hw["usable_fraction"]) if memory else None}
        rows.append(
            {
                "size": arch.label,
                "example": arch.example,
                "params_b": arch.params_b,
                "layers": arch.layers,
                "kv_heads": arch.kv_heads,
                "head_dim": arch.head_dim,
                "kv_cache_bytes": kv * batch,
                "serve": serve,
                "train": train,
                "measured": measured.get(arch.label, []),
            }
        )
    out = {
        "machine": machine.name,
        "context_tokens": context_tokens,
        "batch": batch,
        "devices": hw["devices"],
        "device_summary": ", ".join(
            f"{n} × {name}" for name, n in Counter(short_name(d["name"]) for d in hw["devices"]).items()
        ),
        "memory_bytes": memory,
        "usable_memory_fraction": hw["usable_fraction"],
        "bandwidth_gb_s": bandwidth,
        "sizes": rows,
        "assumptions": ASSUMPTIONS,
        # The drive's sequential read speed as the agent measured it: what bounds a model streamed
        # from storage ("fits if streamed"); None until the agent has measured it.
        "storage_read_bytes_per_s": planner.storage_read_bytes_per_s(machine),
    }
    if out["storage_read_bytes_per_s"] and memory:
        planner.streamed_column(out, out["storage_read_bytes_per_s"])
    for row in rows:
        # The column's cell: the bound for each precision that does not fit in memory.
        row["streamed"] = [
            {"precision": p, "tokens_per_s": cell["streamed_tokens_per_s"]}
            for p, cell in row["serve"].items()
            if cell.get("streamed_tokens_per_s")
        ]
        row["fits_every_precision"] = all(cell["fits"] for cell in row["serve"].values())
    return out
