"""The formulas against examples worked out by hand in the comments."""

from __future__ import annotations

import pytest

from dashboard.economics import formulas as f
from dashboard.economics.hardware import parse_params_b, parse_precision, parse_train_method

approx = pytest.approx


def test_energy_is_watts_times_seconds_in_kwh():
    # 700 W for 2 h = 1,400 Wh = 1.4 kWh; 350 W for one 10 s window = 3,500 J = 0.000972 kWh
    assert f.energy_kwh(700, 7200) == approx(1.4)
    assert f.energy_kwh(350, 10) == approx(3500 / 3.6e6)


def test_power_without_a_sensor_is_estimated_between_idle_and_rated():
    # rated 700 W at 50 %: 700 × (0.1 + 0.9 × 0.5) = 700 × 0.55 = 385 W; idle: 70 W; full: 700 W
    assert f.estimated_power_watts(50, 700) == approx(385)
    assert f.estimated_power_watts(0, 700) == approx(70)
    assert f.estimated_power_watts(100, 700) == approx(700)
    assert f.estimated_power_watts(130, 700) == approx(700)  # utilisation is clamped


def test_energy_cost_includes_the_facility_overhead():
    # 1.4 kWh at the wall of the machine × PUE 1.5 = 2.1 kWh at the meter × 0.20 /kWh = 0.42
    assert f.energy_cost(1.4, 0.20, 1.5) == approx(0.42)


def test_amortisation_is_straight_line_and_stops_after_the_period():
    month = f.SECONDS_PER_MONTH  # 30.4375 days
    day = 86400
    # 36,000 over 36 months = 36,000 / (36 × 30.4375) = 36,000 / 1,095.75 = 32.854 a day
    assert f.amortisation_cost(36000, 36 * month, 0, day) == approx(32.854, abs=1e-3)
    # the whole period is the whole price; nothing before it starts or after it ends
    assert f.amortisation_cost(36000, 36 * month, 0, 36 * month) == approx(36000)
    assert f.amortisation_cost(36000, 36 * month, 36 * month, 36 * month + day) == 0
    assert f.amortisation_cost(36000, 36 * month, -day, 0) == 0
    # a day straddling the end: only the half inside counts, 16.43
    end = 36 * month
    assert f.amortisation_cost(36000, end, end - day / 2, end + day / 2) == approx(32.854 / 2, abs=1e-3)


def test_fixed_costs_accrue_by_the_second():
    # 304.375 a month / 30.4375 days = 10.00 a day
    assert f.fixed_cost(304.375, 86400) == approx(10.0)


def test_roi_and_cost_per_million_tokens():
    # value 150 against cost 100: (150 − 100) / 100 = 50 %
    assert f.roi_percent(150, 100) == approx(50)
    assert f.roi_percent(10, 0) is None
    # 42 spent for 21 M tokens: 42 / 21 = 2.00 per million
    assert f.cost_per_million_tokens(42, 21_000_000) == approx(2.0)
    assert f.cost_per_million_tokens(42, 0) is None


def test_payback_is_what_is_left_of_the_price_over_the_net_rate():
    # price 36,000, 6,000 earned net so far, 100 a day net: 30,000 / 100 = 300 days
    per_s = 100 / 86400
    assert f.payback_seconds(36000, 6000, per_s) / 86400 == approx(300)
    assert f.payback_seconds(36000, 36000, per_s) == 0
    assert f.payback_seconds(36000, 6000, 0) is None  # no net earnings: never
    assert f.payback_seconds(36000, 6000, -per_s) is None


def test_kv_cache_of_llama_3_1_70b_at_4096_tokens():
    # 2 (K, V) × 80 layers × 8 KV heads × 128 dims × 4,096 tokens × 1 sequence × 2 bytes = 1,342,177,280 B
    assert f.kv_cache_bytes(80, 8, 128, 4096, 1) == 1_342_177_280
    # batch 4: four times that
    assert f.kv_cache_bytes(80, 8, 128, 4096, 4) == 4 * 1_342_177_280


def test_memory_fit_on_h100s():
    h100 = 85_520_809_984  # bytes NVML reports for an H100 80GB HBM3
    seventy = next(a for a in f.SIZE_CLASSES if a.label == "70B")
    # fp16: 70.6e9 × 2 = 141.2 GB weights + 1.342 GB KV = 142.54 GB
    need = f.serve_bytes(seventy, "fp16", 4096, 1)
    assert need == approx(142.54e9, rel=1e-3)
    # one H100: 85.52 × 0.9 = 76.97 GB usable: no; two: 153.94 GB: yes
    assert not f.fits(need, h100)
    assert f.fits(need, 2 * h100)
    # int4: 35.3 + 1.34 = 36.64 GB fits on one
    assert f.serve_bytes(seventy, "int4", 4096, 1) == approx(36.64e9, rel=1e-3)
    assert f.fits(f.serve_bytes(seventy, "int4", 4096, 1), h100)


def test_memory_fit_on_an_rtx_4090():
    rtx = 24e9  # 24 GB, 21.6 GB usable
    eight = next(a for a in f.SIZE_CLASSES if a.label == "7-8B")
    # 8.03e9 × 2 = 16.06 GB + KV 2 × 32 × 8 × 128 × 4096 × 2 = 0.537 GB = 16.60 GB: fits
    assert f.serve_bytes(eight, "fp16", 4096, 1) == approx(16.597e9, rel=1e-3)
    assert f.fits(f.serve_bytes(eight, "fp16", 4096, 1), rtx)
    # at batch 16 the cache is 8.6 GB: 24.65 GB, no longer fits
    assert not f.fits(f.serve_bytes(eight, "fp16", 4096, 16), rtx)


def test_training_memory_per_method():
    # full fine-tune of 8.03 B with Adam in mixed precision: × 16 bytes = 128.5 GB
    assert f.train_bytes(8.03, "full") == approx(128.48e9)
    # LoRA: 2 + 0.01 × 16 = 2.16 bytes/param: 17.34 GB
    assert f.train_bytes(8.03, "lora") == approx(17.345e9, rel=1e-3)
    # QLoRA of 70.6 B: (4.127 / 8 + 0.16) = 0.675875 bytes/param: 47.72 GB, fits one H100 (76.97 GB usable)
    assert f.train_bytes(70.6, "qlora") == approx(47.717e9, rel=1e-3)
    assert f.fits(f.train_bytes(70.6, "qlora"), 85_520_809_984)


def test_decode_bound_of_mistral_7b_at_4_bits_on_an_m2_ultra():
    # The example: 800 GB/s over 7.24e9 × 0.5 = 3.62 GB of weights = 221 tokens/s on the
    # weights alone; with the KV cache of 4,096 tokens (32 layers × 8 KV heads × 128 dims: 0.537 GB)
    # 800 / 4.157 = 192 tokens/s: "near 200".
    weights = f.weights_bytes(7.24, "int4")
    assert weights == approx(3.62e9)
    assert f.decode_bound_tokens_per_s(800, weights) == approx(221.0, abs=0.1)
    kv = f.kv_cache_bytes(32, 8, 128, 4096, 1)
    bound = f.decode_bound_tokens_per_s(800, weights, kv)
    assert bound == approx(192.4, abs=0.1)
    # 120 tokens/s reported: 120 / 192.4 = 62 % (about 60 %)
    assert f.efficiency_percent(120, bound) == approx(62.4, abs=0.1)


def test_decode_bound_grows_with_the_batch_until_the_cache_dominates():
    # H100 SXM, 8.03 B at fp16: 3,350 / (16.06 + 0.537) = 201.8 tokens/s at batch 1;
    # batch 8: 8 × 3,350 / (16.06 + 8 × 0.537) = 1,316 tokens/s
    kv = f.kv_cache_bytes(32, 8, 128, 4096, 1)
    w = f.weights_bytes(8.03, "fp16")
    assert f.decode_bound_tokens_per_s(3350, w, kv) == approx(201.8, abs=0.1)
    assert f.decode_bound_tokens_per_s(3350, w, kv, batch=8) == approx(1316.5, abs=0.5)


def test_the_size_class_of_a_parameter_count():
    assert [f.size_class_for(p).label for p in (1, 1.5, 3, 7, 8, 13, 14, 34, 70, 72, 405)] == [
        "1B",
        "1B",
        "3B",
        "7-8B",
        "7-8B",
        "13B",
        "13B",
        "30-34B",
        "70B",
        "70B",
        "405B",
    ]


@pytest.mark.parametrize(
    "text,size",
    [
        ("serve llama-3.1-8b-instruct", 8.0),
        ("Llama-2-70B-chat-hf", 70.0),
        ("vllm serve Qwen/Qwen2.5-1.5B-Instruct", 1.5),
        ("mistral 7B int4", 7.0),
        ("finetune llama_13b_lora", 13.0),
        ("mixtral-8x7b", None),  # a mixture of experts: 8x7b is not 7B
        ("python -m hwprobe.workloads train --seconds 60", None),
        ("bf16 4bit run", None),
    ],
)
def test_the_model_size_is_read_from_a_jobs_name_or_command(text, size):
    assert parse_params_b(text) == size


def test_precision_and_training_method_from_the_name():
    assert parse_precision("llama-70b-awq") == "int4"
    assert parse_precision("mistral-7b q4_K_M") == "int4"
    assert parse_precision("llama-8b q8_0") == "int8"
    assert parse_precision("llama-8b fp8") == "int8"
    assert parse_precision("llama-8b") == "fp16"
    assert parse_train_method("qlora 70b") == "qlora"
    assert parse_train_method("LoRA 8b") == "lora"
    assert parse_train_method("pretrain 1b") == "full"
