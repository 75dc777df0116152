"""The purchase planner: how many machines of each kind a workload needs, what they cost and earn.

The sizing is pure (``plan`` takes candidates and efficiencies, returns dicts); the functions at
the end read candidates and measured efficiencies from the catalogue and the fleet. Every
throughput figure carries its basis: measured on this fleet, estimated as roofline × an efficiency
measured here for the same model class, estimated as roofline × a default efficiency with its
source, or a storage-bandwidth bound for a model that fits only when streamed.

Money is in the plan's currency (USD, the catalogue's); a fleet machine priced in another currency
is listed without money figures.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from . import formulas as f

PLAN_CURRENCY = "USD"
SECONDS_PER_DAY = f.SECONDS_PER_DAY
DEFAULT_PRICE_PER_KWH = 0.15  # USD; a stated default, every plan may set its own
DEFAULT_AMORTISATION_MONTHS = 36
CATALOGUE_DEVICE_COUNTS = (1, 2, 4, 8)  # server sizes of discrete GPUs; an Apple chip is one machine

# ---------------------------------------------------------------------------------------------
# Efficiencies: what fraction of the roofline a machine reaches


@dataclass(frozen=True)
class Efficiency:
    """A fraction of the roofline, and what it rests on."""

    value: float
    basis: Literal["measured", "default"]
    detail: str  # the jobs it was measured on, or the default's source


# The reference point: Mistral-7B (7.24 B parameters) at 4 bits decodes at about 120 tokens/s
# on an M2 Ultra (800 GB/s), where bandwidth alone would allow 800 / 3.62 = 221 tokens/s.
REFERENCE_UNIFIED = {"model": "Mistral-7B", "params_b": 7.24, "precision": "int4", "tokens_per_s": 120.0}
REFERENCE_UNIFIED_BANDWIDTH_GB_S = 800.0
DEFAULT_SERVE_EFFICIENCY = {
    "unified": Efficiency(
        REFERENCE_UNIFIED["tokens_per_s"]
        / f.decode_bound_tokens_per_s(
            REFERENCE_UNIFIED_BANDWIDTH_GB_S, f.weights_bytes(REFERENCE_UNIFIED["params_b"], "int4")
        ),
        "default",
        "Mistral-7B 4-bit at about 120 tokens/s on an M2 Ultra (issue 16's reference point; MLX) "
        "against its 800 GB/s bound of 221 tokens/s",
    ),
    "discrete": Efficiency(
        0.5,
        "default",
        "batch-1 decode of 7-8B models reached 27 % (H100) to 81 % (L4) of the memory-bandwidth floor "
        "(J. Chen, 'Memory-bound but not bandwidth-limited', arXiv, May 2026); 50 % lies between",
    ),
}
DEFAULT_TRAIN_EFFICIENCY = Efficiency(
    0.40, "default", "model FLOPs utilisation of 38-43 % in BF16 on H100 (Llama 3 paper, arXiv:2407.21783, Table 4)"
)

# Storage read speed when the machine did not measure its own (bytes/s): interface limits, so the
# streaming figure stays an upper bound. PCIe 4.0 ×4: 16 GT/s × 4 lanes × 128/130 / 8 = 7.88 GB/s;
# PCIe 3.0 ×4: 3.94 GB/s; SATA III: 6 Gb/s × 8/10 / 8 = 0.6 GB/s.
STORAGE_CLASSES = {
    "nvme-gen4": (7.88e9, "PCIe 4.0 ×4 NVMe interface limit, 7.88 GB/s"),
    "nvme-gen3": (3.94e9, "PCIe 3.0 ×4 NVMe interface limit, 3.94 GB/s"),
    "sata-ssd": (0.6e9, "SATA III interface limit, 0.6 GB/s"),
}
DEFAULT_STORAGE_CLASS = "nvme-gen4"

# Apple publishes no chip TDP; the wall draw of the whole computer at its maximum stands in.
APPLE_SYSTEM_WATTS = {
    "Apple M2 Ultra": (295.0, "Mac Studio (2023) M2 Ultra maximum from the wall, https://support.apple.com/102027"),
}


def efficiency_key(kind: str, size_label: str, platform: str) -> tuple[str, str, str]:
    return (kind, size_label, platform)


def pick_efficiency(
    efficiencies: dict[tuple[str, str, str], Efficiency], kind: str, size_label: str, platform: str
) -> Efficiency:
    """The efficiency measured here for this kind, model class and platform, else the default."""
    found = efficiencies.get(efficiency_key(kind, size_label, platform))
    if found is not None:
        return found
    return DEFAULT_SERVE_EFFICIENCY[platform] if kind == "serve" else DEFAULT_TRAIN_EFFICIENCY


# ---------------------------------------------------------------------------------------------
# The workload


class ServeModel(BaseModel):
    name: str = Field("", max_length=100)
    params_b: float = Field(gt=0, le=2000, description="billions of parameters")
    precision: Literal["fp16", "int8", "int4"] = "int4"
    context_tokens: int = Field(4096, ge=1, le=1_048_576)
    tokens_per_day: float = Field(ge=0, le=1e15, description="generated tokens per day")
    peak_concurrent: int = Field(1, ge=1, le=1_000_000, description="requests decoding at the same time at peak")


class TrainModel(BaseModel):
    name: str = Field("", max_length=100)
    params_b: float = Field(gt=0, le=2000)
    method: Literal["full", "lora", "qlora"] = "lora"
    tokens_per_day: float = Field(ge=0, le=1e15, description="training tokens per day")


class Workload(BaseModel):
    serve: list[ServeModel] = Field(default_factory=list, max_length=20)
    train: list[TrainModel] = Field(default_factory=list, max_length=20)
    electricity_price_per_kwh: float = Field(DEFAULT_PRICE_PER_KWH, ge=0, le=100)
    pue: float = Field(1.0, ge=1.0, le=5.0)
    amortisation_months: int = Field(DEFAULT_AMORTISATION_MONTHS, ge=1, le=240)
    serve_value_per_million: float | None = Field(None, ge=0, description="what a million generated tokens earn")
    train_value_per_million: float | None = Field(None, ge=0, description="what a million training tokens earn")
    device_prices: dict[str, float] = Field(
        default_factory=dict, description="price per device by catalogue name, over the catalogue's launch price"
    )
    storage_class: Literal["nvme-gen4", "nvme-gen3", "sata-ssd"] = DEFAULT_STORAGE_CLASS

    @model_validator(mode="after")
    def _something_to_plan(self) -> Workload:
        if not self.serve and not self.train:
            raise ValueError("describe at least one model to serve or to train")
        if any(p < 0 for p in self.device_prices.values()):
            raise ValueError("device prices must not be negative")
        return self


# ---------------------------------------------------------------------------------------------
# Candidates: one machine of a kind one could buy (or has)


@dataclass(frozen=True)
class Candidate:
    key: str
    label: str
    source: Literal["catalogue", "fleet"]
    platform: Literal["unified", "discrete"]
    devices: int
    memory_bytes: float | None  # all devices together
    usable_fraction: float
    bandwidth_gb_s: float | None  # all devices together
    tflops: float | None  # dense BF16, all devices together
    watts: float | None  # rated draw of the devices (an Apple computer's maximum)
    watts_source: str = ""
    price: float | None = None  # per machine, in ``currency``
    price_source: str = ""
    currency: str = PLAN_CURRENCY
    amortisation_months: int | None = None  # None: the plan's
    price_per_kwh: float | None = None  # None: the plan's
    pue: float | None = None  # None: the plan's
    host_power_watts: float = 0.0
    fixed_monthly: float = 0.0
    storage_read_bytes_per_s: float | None = None  # None: the plan's storage class
    spec: str = ""  # the catalogue row it comes from (catalogue) or its devices' rows (fleet)
    spec_source: str = ""
    # Measured tokens/s of one whole machine: ("serve", size label, precision) or ("train", size label, method)
    measured: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def usable_bytes(self) -> float | None:
        return self.memory_bytes * self.usable_fraction if self.memory_bytes else None


def _storage(c: Candidate, w: Workload) -> tuple[float, str]:
    if c.storage_read_bytes_per_s:
        return c.storage_read_bytes_per_s, "measured by the machine's agent"
    speed, source = STORAGE_CLASSES[w.storage_class]
    return speed, f"default for {w.storage_class}: {source}"


# ---------------------------------------------------------------------------------------------
# Sizing one part of the workload on one kind of machine


def serve_rate(
    c: Candidate, m: ServeModel, efficiencies: dict, storage_read_bytes_per_s: float | None
) -> dict[str, Any]:
    """One machine serving ``m``: how many sequences fit, its tokens/s and what that figure rests on."""
    arch = f.size_class_for(m.params_b)
    weights = f.weights_bytes(m.params_b, m.precision)
    kv = f.kv_cache_bytes(arch.layers, arch.kv_heads, arch.head_dim, m.context_tokens, 1)
    usable = c.usable_bytes
    out: dict[str, Any] = {"size": arch.label, "weights_bytes": weights, "kv_bytes_per_sequence": kv}
    if usable is None or c.bandwidth_gb_s is None:
        return {**out, "mode": "unknown", "reason": "memory or bandwidth unknown", "tokens_per_s": None}
    if weights + kv <= usable:
        mode = "memory"
        sequences = math.floor((usable - weights) / kv)
    else:
        # Streamed: the KV cache stays resident and the weights that do not fit are read from
        # storage at every decode step; the more sequences share a step the more each read yields.
        mode = "streamed"
        sequences = math.floor(usable / kv)
    if sequences < 1:
        return {**out, "mode": "none", "reason": "not even one sequence's KV cache fits", "tokens_per_s": None}
    batch = min(m.peak_concurrent, sequences)
    bounds = {"memory": f.decode_bound_tokens_per_s(c.bandwidth_gb_s, weights, kv, batch)}
    if c.tflops:
        bounds["compute"] = f.compute_bound_tokens_per_s(c.tflops, m.params_b)
    roofline = min(bounds.values())
    eff = pick_efficiency(efficiencies, "serve", arch.label, c.platform)
    out.update(mode=mode, sequences_per_machine=sequences, batch=batch, roofline_tokens_per_s=roofline)
    measured = c.measured.get(("serve", arch.label, m.precision))
    if mode == "memory" and measured:
        return {
            **out,
            "tokens_per_s": measured["tokens_per_s"],
            "basis": "measured",
            "detail": measured["detail"],
            "efficiency": None,
        }
    rate, used = roofline * eff.value, eff.value
    basis = f"estimated, {eff.basis} efficiency"
    detail = f"roofline × {eff.value * 100:.1f} % ({eff.detail})"
    if mode == "streamed":
        resident = max(0.0, usable - batch * kv)
        streamed = weights - resident
        if storage_read_bytes_per_s is None:
            return {**out, "reason": "storage read speed unknown", "tokens_per_s": None}
        storage_bound = f.streamed_bound_tokens_per_s(storage_read_bytes_per_s, streamed, batch)
        out.update(streamed_bytes_per_step=streamed, storage_bound_tokens_per_s=storage_bound)
        if storage_bound < rate:
            # Storage binds: the efficiency plays no part in this figure.
            rate, basis, used = storage_bound, "storage bound", None
            detail = f"{batch} × storage {storage_read_bytes_per_s / 1e9:.2f} GB/s / {streamed / 1e9:.1f} GB streamed"
    return {**out, "tokens_per_s": rate, "basis": basis, "detail": detail, "efficiency": used}


def train_rate(c: Candidate, t: TrainModel, efficiencies: dict) -> dict[str, Any]:
    """One machine training ``t``: whether it fits, its tokens/s and what that figure rests on."""
    arch = f.size_class_for(t.params_b)
    need = f.train_bytes(t.params_b, t.method)
    out: dict[str, Any] = {"size": arch.label, "needed_bytes": need}
    if c.usable_bytes is None:
        return {**out, "mode": "unknown", "reason": "memory unknown", "tokens_per_s": None}
    if need > c.usable_bytes:
        return {**out, "mode": "none", "reason": "does not fit in memory", "tokens_per_s": None}
    measured = c.measured.get(("train", arch.label, t.method))
    if measured:
        return {
            **out,
            "mode": "memory",
            "tokens_per_s": measured["tokens_per_s"],
            "basis": "measured",
            "detail": measured["detail"],
            "efficiency": None,
        }
    if not c.tflops:
        return {**out, "mode": "memory", "reason": "dense TFLOPS unknown", "tokens_per_s": None}
    eff = pick_efficiency(efficiencies, "train", arch.label, c.platform)
    roofline = f.train_bound_tokens_per_s(c.tflops, t.params_b, t.method)
    return {
        **out,
        "mode": "memory",
        "roofline_tokens_per_s": roofline,
        "tokens_per_s": roofline * eff.value,
        "basis": f"estimated, {eff.basis} efficiency",
        "detail": f"roofline × {eff.value * 100:.1f} % ({eff.detail})",
        "efficiency": eff.value,
    }


def machines_needed(needed_tokens_per_s: float, rate_tokens_per_s: float, for_memory: int = 1) -> int:
    """Whole machines for a rate: at least ``for_memory`` (the peak's KV caches), at least one."""
    by_rate = math.ceil(needed_tokens_per_s / rate_tokens_per_s - 1e-9) if needed_tokens_per_s > 0 else 0
    return max(1, for_memory, by_rate)


def evaluate(c: Candidate, w: Workload, efficiencies: dict) -> dict[str, Any]:
    """Every part of the workload on machines like ``c``: counts, cost, value, RoI, payback."""
    storage, storage_source = _storage(c, w)
    parts: list[dict[str, Any]] = []
    problems: list[str] = []
    for m in w.serve:
        r = serve_rate(c, m, efficiencies, storage)
        needed = m.tokens_per_day / SECONDS_PER_DAY
        part = {
            "kind": "serve",
            "model": m.name or f"{m.params_b:g}B {m.precision}",
            "tokens_per_day": m.tokens_per_day,
            "needed_tokens_per_s": needed,
            **r,
        }
        if r["tokens_per_s"]:
            part["machines_for_memory"] = math.ceil(m.peak_concurrent / r["sequences_per_machine"])
            part["machines"] = machines_needed(needed, r["tokens_per_s"], part["machines_for_memory"])
            part["busy_fraction"] = min(1.0, needed / (part["machines"] * r["tokens_per_s"]))
        else:
            problems.append(f"{part['model']}: {r.get('reason', 'no rate')}")
        parts.append(part)
    for t in w.train:
        r = train_rate(c, t, efficiencies)
        needed = t.tokens_per_day / SECONDS_PER_DAY
        part = {
            "kind": "train",
            "model": t.name or f"{t.params_b:g}B {t.method}",
            "tokens_per_day": t.tokens_per_day,
            "needed_tokens_per_s": needed,
            **r,
        }
        if r["tokens_per_s"]:
            part["machines"] = machines_needed(needed, r["tokens_per_s"])
            part["busy_fraction"] = min(1.0, needed / (part["machines"] * r["tokens_per_s"]))
        else:
            problems.append(f"{part['model']}: {r.get('reason', 'no rate')}")
        parts.append(part)

    row: dict[str, Any] = {
        "key": c.key,
        "label": c.label,
        "source": c.source,
        "platform": c.platform,
        "devices": c.devices,
        "memory_bytes": c.memory_bytes,
        "bandwidth_gb_s": c.bandwidth_gb_s,
        "watts": c.watts,
        "price": c.price,
        "price_source": c.price_source,
        "currency": c.currency,
        "storage_read_bytes_per_s": storage,
        "storage_source": storage_source,
        "parts": parts,
        "problems": problems,
        "feasible": not problems,
        "machines": sum(p.get("machines", 0) for p in parts) if not problems else None,
        "basis": _row_basis(parts),
    }
    row.update(_money(c, w, parts) if not problems else _no_money())
    return row


def _row_basis(parts: list[dict[str, Any]]) -> str:
    bases = {p.get("basis") for p in parts if p.get("tokens_per_s")}
    if bases == {"measured"}:
        return "measured"
    if "storage bound" in bases:
        return "storage bound"
    return "estimated" if bases else "unknown"


def _no_money() -> dict[str, Any]:
    keys = (
        "capex",
        "cost_per_day",
        "energy_kwh_per_day",
        "energy_cost_per_day",
        "amortisation_per_day",
        "fixed_per_day",
        "value_per_day",
        "cost_per_million_tokens",
        "roi_percent",
        "payback_days",
    )
    return dict.fromkeys(keys)


def _money(c: Candidate, w: Workload, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Daily cost and value of the machines the parts need, and what follows: cost per million tokens, RoI, payback."""
    out = _no_money()
    machines = sum(p["machines"] for p in parts)
    tokens_per_day = sum(p["tokens_per_day"] for p in parts)
    # Power follows each part's busy fraction between the idle floor and the rated draw.
    if c.watts is not None:
        kwh = sum(
            p["machines"]
            * f.energy_kwh(
                f.estimated_power_watts(p["busy_fraction"] * 100, c.watts) + c.host_power_watts, SECONDS_PER_DAY
            )
            for p in parts
        )
        out["energy_kwh_per_day"] = kwh
    if c.price is None or c.currency != PLAN_CURRENCY or c.watts is None:
        return out
    months = c.amortisation_months or w.amortisation_months
    price_per_kwh = c.price_per_kwh if c.price_per_kwh is not None else w.electricity_price_per_kwh
    pue = c.pue if c.pue is not None else w.pue
    capex = machines * c.price
    amortisation = f.amortisation_cost(capex, months * f.SECONDS_PER_MONTH, 0, SECONDS_PER_DAY)
    energy = f.energy_cost(out["energy_kwh_per_day"], price_per_kwh, pue)
    fixed = machines * f.fixed_cost(c.fixed_monthly, SECONDS_PER_DAY)
    cost = amortisation + energy + fixed
    out.update(
        capex=capex,
        amortisation_per_day=amortisation,
        energy_cost_per_day=energy,
        fixed_per_day=fixed,
        cost_per_day=cost,
        cost_per_million_tokens=f.cost_per_million_tokens(cost, tokens_per_day),
    )
    value = _value_per_day(w)
    if value is not None:
        out["value_per_day"] = value
        out["roi_percent"] = f.roi_percent(value, cost)
        seconds = f.payback_seconds(capex, 0.0, (value - energy - fixed) / SECONDS_PER_DAY)
        out["payback_days"] = seconds / SECONDS_PER_DAY if seconds is not None else None
    return out


def _value_per_day(w: Workload) -> float | None:
    """What the workload earns a day at the plan's rates; None when a part with tokens has no rate."""
    value = 0.0
    for rate, tokens in (
        (w.serve_value_per_million, sum(m.tokens_per_day for m in w.serve)),
        (w.train_value_per_million, sum(t.tokens_per_day for t in w.train)),
    ):
        if tokens:
            if rate is None:
                return None
            value += tokens / 1e6 * rate
    return value


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feasible and priced first by cost per million tokens (then RoI), then feasible unpriced by
    machines, then the rest; ``rank`` is 1-based among the priced."""

    def order(r: dict[str, Any]):
        priced = r["cost_per_million_tokens"] is not None
        return (
            not r["feasible"],
            not priced,
            r["cost_per_million_tokens"] or 0.0,
            -(r["roi_percent"] or 0.0),
            r["machines"] or 0,
            r["label"],
        )

    ordered = sorted(rows, key=order)
    n = 0
    for r in ordered:
        if r["feasible"] and r["cost_per_million_tokens"] is not None:
            n += 1
            r["rank"] = n
        else:
            r["rank"] = None
    return ordered


def best_per_spec(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of the catalogue's machine sizes of one accelerator, the one the workload fares best on."""
    by_spec: dict[str, list[dict[str, Any]]] = defaultdict(list)
    out = []
    for r in rows:
        if r["source"] == "catalogue":
            by_spec[r["spec"]].append(r)
        else:
            out.append(r)
    for group in by_spec.values():
        out.append(rank(group)[0])
    return out


def plan(w: Workload, candidates: list[Candidate], efficiencies: dict) -> dict[str, Any]:
    """Rank the candidates for the workload; catalogue accelerators at their best machine size."""
    rows = []
    for c in candidates:
        row = evaluate(c, w, efficiencies)
        row["spec"] = c.spec
        rows.append(row)
    return {
        "currency": PLAN_CURRENCY,
        "workload": w.model_dump(),
        "value_per_day": _value_per_day(w),
        "rows": rank(best_per_spec(rows)),
        "efficiencies": efficiency_table(w, efficiencies),
    }


def efficiency_table(w: Workload, efficiencies: dict) -> list[dict[str, Any]]:
    """The efficiency each model class of the workload uses on each platform, and its basis."""
    rows = []
    seen = set()
    parts = [("serve", m.params_b) for m in w.serve] + [("train", t.params_b) for t in w.train]
    for kind, params_b in parts:
        label = f.size_class_for(params_b).label
        for platform in ("discrete", "unified"):
            if (kind, label, platform) in seen:
                continue
            seen.add((kind, label, platform))
            e = pick_efficiency(efficiencies, kind, label, platform)
            rows.append(
                {
                    "kind": kind,
                    "size": label,
                    "platform": platform,
                    "efficiency": e.value,
                    "basis": e.basis,
                    "detail": e.detail,
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------
# Fits if streamed, and unified against discrete memory


def streamed_table(w: Workload, candidates: list[Candidate], precision: str, context_tokens: int) -> list[dict]:
    """Per candidate and size class: fits in memory, or the storage-bound tokens/s when streamed (batch 1)."""
    out = []
    for c in candidates:
        storage, source = _storage(c, w)
        cells = []
        for arch in f.SIZE_CLASSES:
            m = ServeModel(
                params_b=arch.params_b,
                precision=precision,
                context_tokens=context_tokens,
                tokens_per_day=0,
                peak_concurrent=1,
            )
            r = serve_rate(c, m, {}, storage)
            cells.append(
                {
                    "size": arch.label,
                    "mode": r["mode"],
                    "bound_tokens_per_s": r.get("roofline_tokens_per_s") if r["mode"] == "memory" else None,
                    "streamed_tokens_per_s": r.get("storage_bound_tokens_per_s"),
                    "streamed_bytes": r.get("streamed_bytes_per_step"),
                }
            )
        out.append(
            {
                "label": c.label,
                "source": c.source,
                "storage_read_bytes_per_s": storage,
                "storage_source": source,
                "cells": cells,
            }
        )
    return out


def streamed_column(capacity: dict[str, Any], storage_read_bytes_per_s: float) -> dict[str, Any]:
    """Add ``streamed_tokens_per_s`` (batch 1) to each serve cell of a ``capacity.machine_capacity``
    result that does not fit in memory: the capacity table's "fits if streamed" column."""
    usable = (capacity.get("memory_bytes") or 0) * capacity["usable_memory_fraction"]
    for row in capacity["sizes"]:
        arch = f.size_class_for(row["params_b"])
        kv = f.kv_cache_bytes(arch.layers, arch.kv_heads, arch.head_dim, capacity["context_tokens"], 1)
        for precision, cell in row["serve"].items():
            if cell["fits"] is False and usable > kv:
                streamed = f.weights_bytes(arch.params_b, precision) - (usable - kv)
                cell["streamed_tokens_per_s"] = f.streamed_bound_tokens_per_s(storage_read_bytes_per_s, streamed)
            else:
                cell["streamed_tokens_per_s"] = None
    return capacity


def unified_vs_discrete(
    w: Workload, candidates: list[Candidate], efficiencies: dict, params_b: float, precision: str, context_tokens: int
) -> list[dict[str, Any]]:
    """One model on each candidate at batch 1: bound, measured and estimated tokens/s, price per GB of
    the memory a model may use, watts, and the cost of a million tokens when it decodes all day."""
    storage_default = STORAGE_CLASSES[w.storage_class][0]
    m = ServeModel(
        params_b=params_b, precision=precision, context_tokens=context_tokens, tokens_per_day=0, peak_concurrent=1
    )
    rows = []
    for c in candidates:
        r = serve_rate(c, m, efficiencies, c.storage_read_bytes_per_s or storage_default)
        rate = r["tokens_per_s"]
        addressable = c.usable_bytes
        measured = c.measured.get(("serve", r["size"], precision))
        row: dict[str, Any] = {
            "label": c.label,
            "source": c.source,
            "platform": c.platform,
            "addressable_bytes": addressable,
            "bandwidth_gb_s": c.bandwidth_gb_s,
            "mode": r["mode"],
            "bound_tokens_per_s": r.get("roofline_tokens_per_s"),
            "measured_tokens_per_s": measured["tokens_per_s"] if measured else None,
            "tokens_per_s": rate,
            "basis": r.get("basis"),
            "watts": c.watts,
            "price": c.price if c.currency == PLAN_CURRENCY else None,
            "price_per_gb": c.price / (addressable / 1e9)
            if c.price is not None and addressable and c.currency == PLAN_CURRENCY
            else None,
            "cost_per_million_tokens": None,
        }
        if rate and row["price"] is not None and c.watts is not None:
            all_day = [{"machines": 1, "busy_fraction": 1.0, "tokens_per_day": rate * SECONDS_PER_DAY}]
            row["cost_per_million_tokens"] = _money(c, w, all_day)["cost_per_million_tokens"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Where the candidates come from (the catalogue and the fleet)


def storage_read_bytes_per_s(machine: Any) -> float | None:
    """The machine's sequential storage read speed (bytes/s) as its agent reported it; None if not
    measured."""
    value = machine.storage_read_bytes_per_s
    return float(value) if value else None


def catalogue_candidates(w: Workload, specs: list[Any]) -> list[Candidate]:
    """Each catalogue accelerator as a machine of 1, 2, 4 or 8 devices (an Apple chip as one computer)."""
    out = []
    for s in specs:
        unified = s.name.startswith("Apple")
        counts = (1,) if unified else CATALOGUE_DEVICE_COUNTS
        device_price = w.device_prices.get(s.name, s.launch_price_usd)
        price_source = (
            "your price" if s.name in w.device_prices else ("catalogue launch price" if s.launch_price_usd else "")
        )
        if unified:
            watts, watts_source = APPLE_SYSTEM_WATTS.get(s.name, (None, ""))
        else:
            watts, watts_source = s.tdp_watts, "catalogue TDP"
        for n in counts:
            out.append(
                Candidate(
                    key=f"catalogue:{s.name}:{n}",
                    label=f"{n} × {s.name}" if not unified else s.name,
                    source="catalogue",
                    platform="unified" if unified else "discrete",
                    devices=n,
                    memory_bytes=s.memory_gb * 1e9 * n if s.memory_gb else None,
                    usable_fraction=f.USABLE_MEMORY_FRACTION_APPLE if unified else f.USABLE_MEMORY_FRACTION,
                    bandwidth_gb_s=s.bandwidth_gb_s * n if s.bandwidth_gb_s else None,
                    tflops=s.bf16_tflops * n if s.bf16_tflops else None,
                    watts=watts * n if watts else None,
                    watts_source=watts_source if watts else "",
                    price=device_price * n if device_price is not None else None,
                    price_source=price_source + (" (accelerators only)" if price_source and not unified else ""),
                    spec=s.name,
                    spec_source=s.source_url,
                )
            )
    return out


def fleet_candidates(
    machine_ids: Collection[int] | None = None,
) -> tuple[list[Candidate], dict[tuple[str, str, str], Efficiency]]:
    """The fleet's machines (of ``machine_ids``; None: all) as candidates, with their measured rates,
    and the efficiencies measured across them per (kind, model class, platform)."""
    from dashboard.fleet.models import Machine
    from dashboard.fleet.visibility import only

    from .capacity import machine_capacity
    from .hardware import all_specs, physical, spec_for
    from .roi import effective_profile

    specs = all_specs()
    candidates = []
    samples: dict[tuple[str, str, str], list[tuple[float, str]]] = defaultdict(list)
    for machine in only(Machine.objects.prefetch_related("accelerators"), machine_ids, "pk").order_by("name"):
        accs = physical(list(machine.accelerators.all()))
        if not accs:
            continue
        cap = machine_capacity(machine, batch=1)
        platform = "unified" if any(a.vendor == "apple" for a in accs) else "discrete"
        found = [spec_for(a.name, specs) for a in accs]
        tflops = sum(s.bf16_tflops for s in found) if all(s and s.bf16_tflops for s in found) else None
        watts_each = [a.power_limit_watts or (s.tdp_watts if s else None) for a, s in zip(accs, found, strict=True)]
        watts = sum(watts_each) if all(watts_each) else None
        if watts is None and platform == "unified" and found[0]:
            watts = APPLE_SYSTEM_WATTS.get(found[0].name, (None, ""))[0]
        measured: dict[tuple[str, str, str], dict[str, Any]] = {}
        grouped: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
        for size in cap["sizes"]:
            for j in size["measured"]:
                variant = j.get("precision") if j["kind"] == "serve" else j.get("method")
                grouped[(j["kind"], size["size"], variant)].append(j)
        for key, jobs in grouped.items():
            rate = sum(j["tokens_per_s"] for j in jobs) / len(jobs)
            names = ", ".join(f"#{j['job_id']}" for j in jobs)
            measured[key] = {"tokens_per_s": rate, "detail": f"{len(jobs)} job(s) on {machine.name}: {names}"}
            for j in jobs:
                eff = _job_efficiency(j, tflops)
                if eff is not None:
                    samples[efficiency_key(j["kind"], key[1], platform)].append((eff, f"#{j['job_id']}"))
        profile = effective_profile(machine)
        candidates.append(
            Candidate(
                key=f"fleet:{machine.name}",
                label=f"{machine.name} ({cap['device_summary']})",
                source="fleet",
                platform=platform,
                devices=len(accs),
                memory_bytes=cap["memory_bytes"],
                usable_fraction=cap["usable_memory_fraction"],
                bandwidth_gb_s=cap["bandwidth_gb_s"],
                tflops=tflops,
                watts=watts,
                watts_source="power limits and catalogue TDP" if watts else "",
                price=profile.purchase_price if profile else None,
                price_source=f"cost profile: {profile.name}" if profile else "",
                currency=profile.currency if profile else PLAN_CURRENCY,
                amortisation_months=profile.amortisation_months if profile else None,
                price_per_kwh=profile.price_per_kwh if profile else None,
                pue=profile.pue if profile else None,
                host_power_watts=profile.host_power_watts if profile else 0.0,
                fixed_monthly=profile.fixed_monthly if profile else 0.0,
                storage_read_bytes_per_s=storage_read_bytes_per_s(machine),
                spec=", ".join(sorted({s.name for s in found if s})),
                measured=measured,
            )
        )
    efficiencies = {
        key: Efficiency(
            sum(v for v, _ in vals) / len(vals),
            "measured",
            f"mean of {len(vals)} job(s) here: {', '.join(j for _, j in vals)}",
        )
        for key, vals in samples.items()
    }
    return candidates, efficiencies


def _job_efficiency(job: dict[str, Any], tflops: float | None) -> float | None:
    """A measured job's rate as a fraction of its roofline: decode bound for serving (as the capacity
    table computes it), the training compute bound for training."""
    if job["kind"] == "serve":
        pct = job.get("efficiency_percent")
        return pct / 100 if pct is not None else None
    if not tflops or not job["tokens_per_s"]:
        return None
    return job["tokens_per_s"] / f.train_bound_tokens_per_s(tflops, job["params_b"], job["method"])


def plan_for(w: Workload, machine_ids: Collection[int] | None = None) -> dict[str, Any]:
    """The whole page's figures for a workload, from the catalogue and the fleet (the machines of
    ``machine_ids``; None: every machine)."""
    from .hardware import all_specs

    fleet, efficiencies = fleet_candidates(machine_ids)
    specs = all_specs()
    catalogue = catalogue_candidates(w, specs)
    result = plan(w, fleet + catalogue, efficiencies)
    first = w.serve[0] if w.serve else None
    params_b = first.params_b if first else REFERENCE_UNIFIED["params_b"]
    precision = first.precision if first else "int4"
    context = first.context_tokens if first else 4096
    singles = fleet + [c for c in catalogue if c.devices == 1]
    result["streamed"] = streamed_table(w, singles, precision, context)
    result["unified"] = unified_vs_discrete(w, singles, efficiencies, params_b, precision, context)
    result["unified_model"] = {"params_b": params_b, "precision": precision, "context_tokens": context}
    result["reference"] = REFERENCE_UNIFIED
    return result
