"""Hand-worked plans: the planner must match arithmetic done by hand, to the cent.

Each scenario writes the hand math out as comments and as plain arithmetic that does not call the
planner, then compares. A month is 365.25 / 12 = 30.4375 days; a day 86,400 s.
"""

from __future__ import annotations

import math

import pytest

from dashboard.economics import planner
from dashboard.economics.planner import Candidate, Efficiency, ServeModel, TrainModel, Workload
from dashboard.fleet.models import Machine

DAY_S = 86400
MONTH_DAYS = 30.4375


def h100s(n: int, price_each: float) -> Candidate:
    """n H100 SXM: 80 GB, 3,350 GB/s, 989.4 dense TFLOPS, 700 W each (the catalogue's row)."""
    return Candidate(
        key=f"test:{n}xH100", label=f"{n} × H100", source="catalogue", platform="discrete", devices=n,
        memory_bytes=80e9 * n, usable_fraction=0.9, bandwidth_gb_s=3350.0 * n, tflops=989.4 * n,
        watts=700.0 * n, price=price_each * n, spec="H100",
    )  # fmt: skip


def test_a_70b_int4_serving_workload_on_four_h100s_per_machine():
    # Llama-class 70B at int4, context 8,192, 500 M generated tokens a day, 32 requests at peak.
    # Weights: 70e9 × 0.5 = 35 GB. KV of one sequence (70B class: 80 layers, 8 KV heads, head dim 128):
    #   2 × 80 × 8 × 128 × 8,192 × 2 bytes = 2,684,354,560 B.
    # One machine: 4 × 80 GB × 0.9 usable = 288 GB; sequences = ⌊(288e9 − 35e9) / 2.684e9⌋ = ⌊94.25⌋ = 94.
    # Batch = min(32, 94) = 32. Memory bound = 32 × 13,400e9 / (35e9 + 32 × 2.684e9) = 3,546.75 tok/s;
    #   compute bound = 3,957.6e12 / (2 × 70e9) = 28,269 tok/s, so memory binds. × 0.5 default = 1,773.38 tok/s.
    # Needed: 500e6 / 86,400 = 5,787.04 tok/s -> ⌈3.263⌉ = 4 machines (1 would hold the peak).
    # Busy = 5,787.04 / (4 × 1,773.38) = 0.81582. Power = 2,800 × (0.1 + 0.9 × 0.81582) = 2,335.87 W a machine.
    # Energy = 4 × 2,335.87 × 24 / 1000 = 224.2437 kWh a day × PUE 1.2 × 0.15 USD = 40.36 USD.
    # Amortisation = 4 × 100,000 / (36 × 30.4375) = 365.05 USD a day. Cost = 405.41 USD a day.
    # Cost per million tokens = 405.41 / 500 = 0.81 USD. Value = 500 × 2 = 1,000 USD a day;
    # RoI = (1,000 − 405.41) / 405.41 = 146.66 %. Payback = 400,000 / (1,000 − 40.36) = 416.82 days.
    w = Workload(
        serve=[ServeModel(params_b=70, precision="int4", context_tokens=8192, tokens_per_day=5e8, peak_concurrent=32)],
        electricity_price_per_kwh=0.15, pue=1.2, amortisation_months=36, serve_value_per_million=2.0,
    )  # fmt: skip
    row = planner.evaluate(h100s(4, 25_000), w, {})

    kv = 2 * 80 * 8 * 128 * 8192 * 2
    assert kv == 2_684_354_560
    sequences = math.floor((288e9 - 35e9) / kv)
    rate = 32 * 13_400e9 / (35e9 + 32 * kv) * 0.5
    machines = math.ceil(500e6 / DAY_S / rate)
    busy = 500e6 / DAY_S / (machines * rate)
    energy = machines * 2800 * (0.1 + 0.9 * busy) * 24 / 1000 * 1.2 * 0.15
    cost = machines * 100_000 / (36 * MONTH_DAYS) + energy
    part = row["parts"][0]
    assert (sequences, machines) == (94, 4)
    assert part["sequences_per_machine"] == 94 and part["batch"] == 32 and part["machines_for_memory"] == 1
    assert part["tokens_per_s"] == pytest.approx(rate) == pytest.approx(1773.376, abs=1e-3)
    assert part["basis"] == "estimated, default efficiency"
    assert row["machines"] == 4
    assert round(row["energy_cost_per_day"], 2) == round(energy, 2) == 40.36
    assert round(row["amortisation_per_day"], 2) == 365.05
    assert round(row["cost_per_day"], 2) == round(cost, 2) == 405.41
    assert round(row["cost_per_million_tokens"], 2) == 0.81
    assert round(row["roi_percent"], 2) == 146.66
    assert round(row["payback_days"], 2) == 416.82


def test_continuous_training_and_serving_get_their_own_machines():
    # Serve an 8B model in fp16 (100 M tokens a day, 8 at peak, context 4,096) and fine-tune an 8B
    # with LoRA on 200 M tokens a day, on machines of one H100 (30,000 USD).
    # Serve: weights 16 GB; KV (7-8B class: 32 layers, 8 heads, dim 128) 2 × 32 × 8 × 128 × 4,096 × 2
    #   = 536,870,912 B; sequences ⌊(72e9 − 16e9) / 0.5369e9⌋ = 104; batch 8.
    #   Bound = 8 × 3,350e9 / (16e9 + 8 × 0.5369e9) = 1,320.52 tok/s × 0.5 = 660.26; needed 1,157.41 -> 2 machines,
    #   busy 1,157.41 / 1,320.52 = 0.87648.
    # Train: LoRA needs 8 × 2.16 = 17.28 GB (fits); bound = 989.4e12 / (4 × 8e9) = 30,918.75 tok/s × 0.4 =
    #   12,367.5 tok/s; needed 2,314.81 -> 1 machine, busy 0.18717.
    # Energy: (2 × 700 × (0.1 + 0.9 × 0.87648) + 700 × (0.1 + 0.9 × 0.18717)) × 24 h = 34.3746 kWh × 0.15 = 5.16 USD.
    # Amortisation: 3 × 30,000 / 1,095.75 = 82.14 USD. Cost 87.29 USD a day for 300 M tokens: 0.29 USD per million.
    # Value: 100 × 2 + 200 × 0.5 = 300 USD; RoI = (300 − 87.29) / 87.29 = 243.68 %;
    # payback 90,000 / (300 − 5.16) = 305.25 days.
    w = Workload(
        serve=[ServeModel(params_b=8, precision="fp16", context_tokens=4096, tokens_per_day=100e6, peak_concurrent=8)],
        train=[TrainModel(params_b=8, method="lora", tokens_per_day=200e6)],
        electricity_price_per_kwh=0.15, serve_value_per_million=2.0, train_value_per_million=0.5,
    )  # fmt: skip
    row = planner.evaluate(h100s(1, 30_000), w, {})
    serve, train = row["parts"]
    assert (serve["machines"], train["machines"], row["machines"]) == (2, 1, 3)
    assert serve["tokens_per_s"] == pytest.approx(8 * 3350e9 / (16e9 + 8 * 536_870_912) * 0.5)
    assert train["tokens_per_s"] == pytest.approx(989.4e12 / (4 * 8e9) * 0.4) == pytest.approx(12_367.5)
    assert round(row["energy_kwh_per_day"], 4) == 34.3746
    assert round(row["energy_cost_per_day"], 2) == 5.16
    assert round(row["amortisation_per_day"], 2) == 82.14
    assert round(row["cost_per_day"], 2) == 87.29
    assert round(row["cost_per_million_tokens"], 2) == 0.29
    assert round(row["roi_percent"], 2) == 243.68
    assert round(row["payback_days"], 2) == 305.25

    # The training rate measured on this fleet (LoRA 8B: 9,000 tok/s) replaces the estimate.
    measured = Candidate(**{**h100s(1, 30_000).__dict__, "measured": {("train", "7-8B", "lora"): {
        "tokens_per_s": 9000.0, "detail": "1 job(s) on gpu-01: #7"}}})  # fmt: skip
    train = planner.evaluate(measured, w, {})["parts"][1]
    assert (train["tokens_per_s"], train["basis"], train["machines"]) == (9000.0, "measured", 1)


def test_a_405b_model_fits_an_m2_ultra_only_when_streamed():
    # Llama 3.1 405B at int4 on one M2 Ultra (192 GB, 0.75 usable = 144 GB, 800 GB/s, 295 W, 6,999 USD),
    # 10,000 tokens a day, one request at a time, context 4,096, storage at the NVMe PCIe 4.0 ×4 limit 7.88 GB/s.
    # Weights 202.5 GB > 144 GB: it does not fit; streamed, the KV cache stays resident:
    #   KV (405B class: 126 layers, 8 heads, dim 128) = 2 × 126 × 8 × 128 × 4,096 × 2 = 2,113,929,216 B.
    #   Resident weights = 144e9 − 2.114e9 = 141.886 GB; streamed per token = 202.5e9 − 141.886e9 = 60.614 GB.
    #   Storage bound = 7.88e9 / 60.614e9 = 0.13000 tok/s, below the memory bound × 0.543 (2.12 tok/s).
    # Needed 10,000 / 86,400 = 0.11574 tok/s -> 1 machine, busy 0.89029.
    # Power 295 × (0.1 + 0.9 × 0.89029) = 265.87 W -> 6.3809 kWh × 0.15 = 0.96 USD; amortisation
    # 6,999 / 1,095.75 = 6.39 USD; cost 7.34 USD a day for 0.01 M tokens: 734.45 USD per million.
    m2 = Candidate(
        key="test:m2", label="M2 Ultra", source="catalogue", platform="unified", devices=1, memory_bytes=192e9,
        usable_fraction=0.75, bandwidth_gb_s=800.0, tflops=None, watts=295.0, price=6999.0, spec="Apple M2 Ultra",
    )  # fmt: skip
    w = Workload(
        serve=[ServeModel(params_b=405, precision="int4", context_tokens=4096, tokens_per_day=10_000)],
        electricity_price_per_kwh=0.15,
    )
    row = planner.evaluate(m2, w, {})
    part = row["parts"][0]
    kv = 2 * 126 * 8 * 128 * 4096 * 2
    streamed = 202.5e9 - (144e9 - kv)
    assert 202.5e9 + kv > 144e9  # it does not fit in memory
    assert part["mode"] == "streamed" and part["basis"] == "storage bound"
    assert part["streamed_bytes_per_step"] == pytest.approx(streamed)
    assert part["tokens_per_s"] == pytest.approx(7.88e9 / streamed) == pytest.approx(0.13000, abs=1e-5)
    assert row["machines"] == 1 and row["basis"] == "storage bound"
    assert round(row["energy_cost_per_day"], 2) == 0.96
    assert round(row["amortisation_per_day"], 2) == 6.39
    assert round(row["cost_per_day"], 2) == 7.34
    assert round(row["cost_per_million_tokens"], 2) == 734.45
    assert row["roi_percent"] is None  # no value rate given: never invent money

    # A machine with a measured 1 GB/s disk streams at 1e9 / 60.614e9 = 0.0165 tok/s: 8 machines for the same day.
    slow = Candidate(**{**m2.__dict__, "storage_read_bytes_per_s": 1e9})
    part = planner.evaluate(slow, w, {})["parts"][0]
    assert part["tokens_per_s"] == pytest.approx(1e9 / streamed)
    assert part["machines"] == math.ceil(10_000 / DAY_S / (1e9 / streamed)) == 8


def test_the_unified_memory_default_is_the_m2_ultra_reference_point():
    # 120 tok/s against 800e9 / (7.24e9 × 0.5) = 220.99 tok/s: 0.5430.
    assert planner.DEFAULT_SERVE_EFFICIENCY["unified"].value == pytest.approx(120 / (800e9 / 3.62e9))
    assert round(planner.DEFAULT_SERVE_EFFICIENCY["unified"].value, 4) == 0.5430


def test_ranking_puts_the_cheapest_per_million_tokens_first_and_the_unpriced_last():
    w = Workload(serve=[ServeModel(params_b=8, precision="int4", tokens_per_day=1e8, peak_concurrent=4)])
    # Fleet machines each keep their row (catalogue rows of one accelerator collapse to its best size).
    cheap = Candidate(**{**h100s(1, 10_000).__dict__, "key": "cheap", "label": "cheap", "source": "fleet"})
    dear = Candidate(**{**h100s(1, 40_000).__dict__, "key": "dear", "label": "dear", "source": "fleet"})
    unpriced = Candidate(**{**dear.__dict__, "key": "unpriced", "label": "unpriced", "price": None})
    result = planner.plan(w, [unpriced, dear, cheap], {})
    assert [(r["label"], r["rank"]) for r in result["rows"]] == [("cheap", 1), ("dear", 2), ("unpriced", None)]


def test_a_catalogue_accelerator_appears_once_at_its_best_machine_size():
    w = Workload(serve=[ServeModel(params_b=75, precision="fp16", tokens_per_day=1e6)])  # 150 GB of weights
    sizes = [Candidate(**{**h100s(n, 25_000).__dict__, "key": f"h100:{n}"}) for n in (1, 2, 4, 8)]
    (row,) = planner.plan(w, sizes, {})["rows"]
    assert row["key"] == "h100:4"  # 1 and 2 GPUs cannot hold it; 4 costs less than 8


def test_a_measured_efficiency_is_named_in_the_efficiency_table():
    w = Workload(serve=[ServeModel(params_b=70, tokens_per_day=1e6)])
    eff = {("serve", "70B", "discrete"): Efficiency(0.31, "measured", "mean of 2 job(s) here: #1, #2")}
    table = planner.efficiency_table(w, eff)
    assert {(e["platform"], e["basis"], e["efficiency"]) for e in table} == {
        ("discrete", "measured", 0.31),
        ("unified", "default", planner.DEFAULT_SERVE_EFFICIENCY["unified"].value),
    }


def test_the_capacity_table_gets_a_streamed_column_where_a_model_does_not_fit():
    # 405B (405.9e9 params) at int4 on 192 GB × 0.75: streamed = 202.95e9 − (144e9 − 2.114e9) bytes per token;
    # at 7.88 GB/s that is 7.88e9 / 61.064e9 = 0.129 tok/s. The 1B row fits, so it has no streamed figure.
    capacity = {
        "memory_bytes": 192e9,
        "usable_memory_fraction": 0.75,
        "context_tokens": 4096,
        "sizes": [
            {"params_b": 405.9, "serve": {"int4": {"fits": False}}},
            {"params_b": 1.24, "serve": {"int4": {"fits": True}}},
        ],
    }
    planner.streamed_column(capacity, 7.88e9)
    kv = 2 * 126 * 8 * 128 * 4096 * 2
    big, small = (row["serve"]["int4"]["streamed_tokens_per_s"] for row in capacity["sizes"])
    assert big == pytest.approx(7.88e9 / (405.9e9 * 0.5 - (144e9 - kv)))
    assert round(big, 3) == 0.129 and small is None


def test_the_planner_reads_the_storage_speed_the_machines_agent_reported():
    assert planner.storage_read_bytes_per_s(Machine(name="m", storage_read_bytes_per_s=None)) is None
    assert planner.storage_read_bytes_per_s(Machine(name="m", storage_read_bytes_per_s=3.2e9)) == 3.2e9
