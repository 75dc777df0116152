"""Invariants of the formulas, for any inputs hypothesis can think of."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dashboard.economics import formulas as f

money = st.floats(min_value=0, max_value=1e7, allow_nan=False)
seconds = st.floats(min_value=0, max_value=20 * 365 * 86400, allow_nan=False)
watts = st.lists(st.floats(min_value=0, max_value=20_000, allow_nan=False), min_size=1, max_size=48)


def cumulative_cost(
    t_s: float, price: float, period_s: float, per_kwh: float, pue: float, monthly: float, power_by_hour: list[float]
) -> float:
    """Cost from going into service until ``t_s``, with the hourly power trace repeating."""
    hours_done = int(t_s // 3600)
    energy = sum(power_by_hour[h % len(power_by_hour)] for h in range(min(hours_done, 2000))) * 3600 / 3.6e6
    return (
        f.amortisation_cost(price, period_s, 0, t_s) + f.fixed_cost(monthly, t_s) + f.energy_cost(energy, per_kwh, pue)
    )


@given(
    seconds,
    seconds,
    money,
    st.integers(1, 120),
    st.floats(0, 2, allow_nan=False),
    st.floats(1, 3, allow_nan=False),
    money,
    watts,
)
def test_cost_never_decreases_with_time(t1, t2, price, months, per_kwh, pue, monthly, power):
    lo, hi = sorted((t1, t2))
    period = months * f.SECONDS_PER_MONTH
    assert cumulative_cost(lo, price, period, per_kwh, pue, monthly, power) <= cumulative_cost(
        hi, price, period, per_kwh, pue, monthly, power
    ) + 1e-6 * max(1.0, price + monthly)


@given(money, st.integers(1, 120), seconds, seconds, seconds)
def test_amortisation_adds_up_and_never_exceeds_the_price(price, months, a, b, c):
    t0, t1, t2 = sorted((a, b, c))
    period = months * f.SECONDS_PER_MONTH
    whole = f.amortisation_cost(price, period, t0, t2)
    parts = f.amortisation_cost(price, period, t0, t1) + f.amortisation_cost(price, period, t1, t2)
    assert abs(whole - parts) <= 1e-6 * max(1.0, price)
    assert 0 <= whole <= price * (1 + 1e-9)


sizes = st.sampled_from(f.SIZE_CLASSES)
precisions = st.sampled_from(tuple(f.BYTES_PER_PARAM))
memory = st.floats(min_value=1e9, max_value=2e13, allow_nan=False)


@given(sizes, sizes, precisions, memory, st.integers(1, 16_384), st.integers(1, 4))
def test_a_larger_model_never_fits_where_a_smaller_one_does_not(a, b, precision, mem, context, batch):
    small, large = sorted((a, b), key=lambda arch: arch.params_b)
    # Llama 2 13B has no grouped-query attention: past 64k tokens of cache (context × batch) it
    # needs more memory than the 34B class, which is true of that model and not a contradiction.
    if small.label == "13B" and context * batch > 65_536:
        return
    if f.fits(f.serve_bytes(large, precision, context, batch), mem):
        assert f.fits(f.serve_bytes(small, precision, context, batch), mem)


@given(st.floats(0.1, 1000), st.floats(0.1, 1000), st.sampled_from(tuple(f.TRAIN_BYTES_PER_PARAM)), memory)
def test_a_larger_model_never_trains_where_a_smaller_one_does_not(p1, p2, method, mem):
    small, large = sorted((p1, p2))
    if f.fits(f.train_bytes(large, method), mem):
        assert f.fits(f.train_bytes(small, method), mem)


@given(sizes, memory, st.integers(1, 16_384), st.integers(1, 64))
def test_fewer_bits_never_need_more_memory(arch, mem, context, batch):
    needs = [f.serve_bytes(arch, p, context, batch) for p in ("fp16", "int8", "int4")]
    assert needs[0] >= needs[1] >= needs[2]
    assert (
        f.train_bytes(arch.params_b, "full")
        >= f.train_bytes(arch.params_b, "lora")
        >= f.train_bytes(arch.params_b, "qlora")
    )


@given(st.floats(1, 10_000), st.floats(0.1, 1000), st.sampled_from(tuple(f.BYTES_PER_PARAM)), st.integers(1, 256))
def test_the_decode_bound_falls_as_the_model_grows_and_rises_with_bandwidth(bandwidth, params_b, precision, batch):
    w = f.weights_bytes(params_b, precision)
    kv = f.kv_cache_bytes(32, 8, 128, 4096, 1)
    bound = f.decode_bound_tokens_per_s(bandwidth, w, kv, batch)
    assert f.decode_bound_tokens_per_s(bandwidth, w * 2, kv, batch) < bound
    assert f.decode_bound_tokens_per_s(bandwidth * 2, w, kv, batch) > bound


@given(money, st.floats(-1e6, 1e6, allow_nan=False), st.floats(1e-6, 1e3), st.floats(1e-6, 1e3))
def test_a_higher_net_rate_never_pays_back_later(price, earned, r1, r2):
    slow, fast = sorted((r1, r2))
    s, q = f.payback_seconds(price, earned, slow), f.payback_seconds(price, earned, fast)
    assert s is not None and q is not None and q <= s
