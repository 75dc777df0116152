"""The arithmetic of cost, value and capacity: pure functions, no Django, units in every name.

Money is a float in one currency (the caller never mixes currencies). Memory and bandwidth use
decimal units as vendors publish them: 1 GB = 10^9 bytes, 1 GB/s = 10^9 bytes/s.
"""

from __future__ import annotations

from dataclasses import dataclass

SECONDS_PER_DAY = 86400.0
DAYS_PER_MONTH = 365.25 / 12  # 30.4375: a month in amortisation and fixed costs
SECONDS_PER_MONTH = DAYS_PER_MONTH * SECONDS_PER_DAY
JOULES_PER_KWH = 3.6e6

# ---------------------------------------------------------------------------------------------
# Energy and cost

# With no power sensor, draw is modelled as linear in utilisation between an idle floor and the
# rated power: P = rated × (IDLE_FRACTION + (1 − IDLE_FRACTION) × util/100). An H100 SXM idles
# near 70 W of its 700 W, hence 0.1.
IDLE_POWER_FRACTION = 0.1


def energy_kwh(power_watts: float, seconds: float) -> float:
    """Energy in kWh of a mean draw of ``power_watts`` W held for ``seconds`` s."""
    return power_watts * seconds / JOULES_PER_KWH


def estimated_power_watts(util_percent: float, rated_watts: float, idle_fraction: float = IDLE_POWER_FRACTION) -> float:
    """Estimated draw in W at ``util_percent`` % utilisation of a device rated ``rated_watts`` W."""
    util = min(100.0, max(0.0, util_percent))
    return rated_watts * (idle_fraction + (1.0 - idle_fraction) * util / 100.0)


def energy_cost(it_kwh: float, price_per_kwh: float, pue: float = 1.0) -> float:
    """Cost of ``it_kwh`` kWh drawn by the machine, with the facility overhead: kWh × PUE × price."""
    return it_kwh * pue * price_per_kwh


def amortisation_cost(purchase_price: float, period_s: float, start_s: float, end_s: float) -> float:
    """Straight-line amortisation accrued between ``start_s`` and ``end_s`` (seconds since the
    machine went into service): the price spread evenly over ``period_s``, nothing after it."""
    lo = max(0.0, start_s)
    hi = min(period_s, end_s)
    if hi <= lo or period_s <= 0:
        return 0.0
    return purchase_price * (hi - lo) / period_s


def fixed_cost(monthly: float, seconds: float) -> float:
    """A fixed monthly cost accrued over ``seconds`` s (a month is 365.25/12 days)."""
    return monthly * max(0.0, seconds) / SECONDS_PER_MONTH


def roi_percent(value: float, cost: float) -> float | None:
    """Return on investment in %: (value − cost) / cost × 100; None when nothing was spent."""
    if cost <= 0:
        return None
    return (value - cost) / cost * 100.0


def cost_per_million_tokens(cost: float, tokens: float) -> float | None:
    """Cost of one million tokens; None when no tokens were produced."""
    if tokens <= 0:
        return None
    return cost / tokens * 1e6


def payback_seconds(purchase_price: float, net_earned: float, net_rate_per_s: float) -> float | None:
    """Seconds from now until the purchase price is earned back.

    ``net_earned`` is the value so far minus the running costs so far (energy and fixed), and
    ``net_rate_per_s`` the recent rate of the same; 0 when already paid back, None when the
    machine does not earn more than it costs to run (it never pays back at this rate).
    """
    remaining = purchase_price - net_earned
    if remaining <= 0:
        return 0.0
    if net_rate_per_s <= 0:
        return None
    return remaining / net_rate_per_s


# ---------------------------------------------------------------------------------------------
# Capacity: what fits in memory and how fast decode can go

# Every precision a job may state; the capacity table's columns are fp16, int8 and int4.
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
KV_BYTES_PER_VALUE = 2.0  # the KV cache stays in fp16 whatever the weights' precision
# What of the device memory a model may use: the rest goes to the CUDA context, activations and
# fragmentation. macOS lets the GPU wire about three quarters of unified memory by default.
USABLE_MEMORY_FRACTION = 0.9
USABLE_MEMORY_FRACTION_APPLE = 0.75

# Training, bytes per parameter (activations excluded: gradient checkpointing keeps them small
# next to these, and the usable fraction leaves room).
# Full fine-tune with Adam in mixed precision: fp16 weights 2 + fp16 gradients 2 + fp32 master
# weights 4 + Adam first moment 4 + second moment 4 = 16 (the ZeRO paper's accounting).
FULL_ADAM_MIXED_BYTES_PER_PARAM = 16.0
# LoRA adapters on every linear layer at rank 16 are about 1 % of the base parameters; each
# trainable adapter parameter costs the same 16 bytes as a full fine-tune.
LORA_TRAINABLE_FRACTION = 0.01
LORA_BYTES_PER_PARAM = 2.0 + LORA_TRAINABLE_FRACTION * FULL_ADAM_MIXED_BYTES_PER_PARAM  # frozen bf16 base
# QLoRA: the frozen base in 4-bit NF4 with double-quantised constants, about 4.127 bits a weight.
QLORA_BASE_BYTES_PER_PARAM = 4.127 / 8
QLORA_BYTES_PER_PARAM = QLORA_BASE_BYTES_PER_PARAM + LORA_TRAINABLE_FRACTION * FULL_ADAM_MIXED_BYTES_PER_PARAM
TRAIN_BYTES_PER_PARAM = {
    "full": FULL_ADAM_MIXED_BYTES_PER_PARAM,
    "lora": LORA_BYTES_PER_PARAM,
    "qlora": QLORA_BYTES_PER_PARAM,
}


@dataclass(frozen=True)
class Architecture:
    """The numbers of one representative model that memory and bandwidth depend on."""

    label: str  # the size class: "7-8B"
    example: str  # the public model whose configuration these are
    params_b: float  # parameters, billions
    layers: int
    kv_heads: int
    head_dim: int


# Public configurations (config.json on the model cards); all but Llama 2 13B use grouped-query
# attention with 8 KV heads.
SIZE_CLASSES: tuple[Architecture, ...] = (
    Architecture("1B", "Llama 3.2 1B", 1.24, 16, 8, 64),
    Architecture("3B", "Llama 3.2 3B", 3.21, 28, 8, 128),
    Architecture("7-8B", "Llama 3.1 8B", 8.03, 32, 8, 128),
    Architecture("13B", "Llama 2 13B", 13.0, 40, 40, 128),
    Architecture("30-34B", "Code Llama 34B", 33.7, 48, 8, 128),
    Architecture("70B", "Llama 3.1 70B", 70.6, 80, 8, 128),
    Architecture("405B", "Llama 3.1 405B", 405.9, 126, 8, 128),
)


def size_class_for(params_b: float) -> Architecture:
    """The size class a model of ``params_b`` billion parameters belongs to."""
    bounds = (1.8, 5.0, 10.0, 20.0, 50.0, 150.0)
    for arch, upper in zip(SIZE_CLASSES, bounds, strict=False):
        if params_b < upper:
            return arch
    return SIZE_CLASSES[-1]


def weights_bytes(params_b: float, precision: str) -> float:
    """Bytes of the weights of ``params_b`` billion parameters at ``precision`` (a key of BYTES_PER_PARAM)."""
    return params_b * 1e9 * BYTES_PER_PARAM[precision]


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, context_tokens: int, batch: int) -> float:
    """Bytes of the KV cache: 2 (K and V) × layers × KV heads × head dim × tokens × sequences × 2 bytes."""
    return 2.0 * layers * kv_heads * head_dim * context_tokens * batch * KV_BYTES_PER_VALUE


def serve_bytes(arch: Architecture, precision: str, context_tokens: int, batch: int) -> float:
    """Memory to serve ``arch`` at ``precision``: weights plus the KV cache for the context and batch."""
    return weights_bytes(arch.params_b, precision) + kv_cache_bytes(
        arch.layers, arch.kv_heads, arch.head_dim, context_tokens, batch
    )


def train_bytes(params_b: float, method: str) -> float:
    """Memory to train ``params_b`` billion parameters by ``method`` (full, lora, qlora), activations aside."""
    return params_b * 1e9 * TRAIN_BYTES_PER_PARAM[method]


def fits(needed_bytes: float, memory_bytes: float, usable_fraction: float = USABLE_MEMORY_FRACTION) -> bool:
    """Whether ``needed_bytes`` fit in the usable part of ``memory_bytes``."""
    return needed_bytes <= memory_bytes * usable_fraction


def decode_bound_tokens_per_s(
    bandwidth_gb_s: float, weights: float, kv_per_sequence: float = 0.0, batch: int = 1
) -> float:
    """Upper bound on decode tokens/s when memory bandwidth is the limit.

    Each decode step reads every weight once and each sequence's KV cache, and yields one token
    per sequence: batch × bandwidth / (weight bytes + batch × KV bytes per sequence).
    """
    per_step = weights + batch * kv_per_sequence
    return batch * bandwidth_gb_s * 1e9 / per_step


def efficiency_percent(measured: float, bound: float) -> float | None:
    """Measured rate as a % of its bound; None when there is no bound."""
    if bound <= 0:
        return None
    return measured / bound * 100.0


# ---------------------------------------------------------------------------------------------
# Compute and storage bounds (the planner's roofline)

# A forward pass costs about 2 FLOPs per parameter per token (one multiply-add per weight).
# Training adds the backward pass: full fine-tuning computes gradients for activations and
# weights (2 + 4 = 6 per parameter, Kaplan et al. 2020); LoRA and QLoRA freeze the base, so its
# weight gradients are skipped (2 + 2 = 4; the adapters' own share is about 1 % and left out).
FORWARD_FLOPS_PER_PARAM = 2.0
TRAIN_FLOPS_PER_PARAM = {"full": 6.0, "lora": 4.0, "qlora": 4.0}


def compute_bound_tokens_per_s(tflops: float, params_b: float) -> float:
    """Upper bound on decode tokens/s when compute is the limit: dense TFLOPS / (2 × parameters)."""
    return tflops * 1e12 / (FORWARD_FLOPS_PER_PARAM * params_b * 1e9)


def train_bound_tokens_per_s(tflops: float, params_b: float, method: str) -> float:
    """Upper bound on training tokens/s: dense TFLOPS / (FLOPs per parameter of ``method`` × parameters)."""
    return tflops * 1e12 / (TRAIN_FLOPS_PER_PARAM[method] * params_b * 1e9)


def streamed_bound_tokens_per_s(storage_read_bytes_per_s: float, streamed_bytes: float, batch: int = 1) -> float:
    """Upper bound on decode tokens/s when the weights that are not resident are read from storage at
    every step (OnnxStream's weights provider): batch × storage read bytes/s / streamed bytes.
    Infinite when nothing is streamed (the model fits and storage is not the limit)."""
    if streamed_bytes <= 0:
        return float("inf")
    return batch * storage_read_bytes_per_s / streamed_bytes
