"""Invariants of the planner for any machine and workload hypothesis can think of."""

from __future__ import annotations

import math
from unittest import mock

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dashboard.economics import formulas as f
from dashboard.economics import planner
from dashboard.economics.planner import Candidate, Efficiency, ServeModel, TrainModel, Workload

platforms = st.sampled_from(["discrete", "unified"])
tokens = st.floats(min_value=0, max_value=1e11, allow_nan=False)


@st.composite
def candidates(draw) -> Candidate:
    platform = draw(platforms)
    return Candidate(
        key="c",
        label="c",
        source="catalogue",
        platform=platform,
        devices=1,
        memory_bytes=draw(st.floats(min_value=8e9, max_value=2e12)),
        usable_fraction=0.75 if platform == "unified" else 0.9,
        bandwidth_gb_s=draw(st.floats(min_value=50, max_value=40_000)),
        tflops=draw(st.one_of(st.none(), st.floats(min_value=10, max_value=20_000))),
        watts=draw(st.floats(min_value=50, max_value=12_000)),
        price=draw(st.floats(min_value=500, max_value=1e6)),
        host_power_watts=draw(st.floats(min_value=0, max_value=2000)),
        storage_read_bytes_per_s=draw(st.one_of(st.none(), st.floats(min_value=1e8, max_value=3e10))),
    )


@st.composite
def serve_models(draw) -> ServeModel:
    return ServeModel(
        params_b=draw(st.floats(min_value=0.5, max_value=500)),
        precision=draw(st.sampled_from(["fp16", "int8", "int4"])),
        context_tokens=draw(st.integers(256, 131_072)),
        tokens_per_day=draw(tokens),
        peak_concurrent=draw(st.integers(1, 512)),
    )


@st.composite
def train_models(draw) -> TrainModel:
    return TrainModel(
        params_b=draw(st.floats(min_value=0.5, max_value=100)),
        method=draw(st.sampled_from(["full", "lora", "qlora"])),
        tokens_per_day=draw(tokens),
    )


def workload(serve: list[ServeModel], train: list[TrainModel], **money) -> Workload:
    return Workload(serve=serve, train=train, serve_value_per_million=2.0, train_value_per_million=0.5, **money)


@settings(max_examples=150, deadline=None)
@given(candidates(), serve_models(), st.lists(train_models(), max_size=1), st.floats(min_value=1, max_value=100))
def test_more_tokens_per_day_never_lowers_the_machines_needed(c, m, train, factor):
    w = workload([m], train)
    more = workload(
        [m.model_copy(update={"tokens_per_day": m.tokens_per_day * factor})],
        [t.model_copy(update={"tokens_per_day": t.tokens_per_day * factor}) for t in train],
    )
    before, after = planner.evaluate(c, w, {}), planner.evaluate(c, more, {})
    assume(before["feasible"])
    assert after["feasible"]
    assert after["machines"] >= before["machines"]
    for a, b in zip(before["parts"], after["parts"], strict=True):
        assert b["machines"] >= a["machines"]


@settings(max_examples=150, deadline=None)
@given(
    candidates(),
    st.lists(serve_models(), min_size=1, max_size=2),
    st.lists(train_models(), max_size=1),
    st.floats(min_value=0, max_value=2),
    st.floats(min_value=0, max_value=2),
    st.floats(min_value=1, max_value=2),
)
def test_cheaper_power_never_lowers_roi(c, serve, train, price_a, price_b, pue):
    cheap, dear = sorted((price_a, price_b))
    low = planner.evaluate(c, workload(serve, train, electricity_price_per_kwh=cheap, pue=pue), {})
    high = planner.evaluate(c, workload(serve, train, electricity_price_per_kwh=dear, pue=pue), {})
    assume(low["roi_percent"] is not None and high["roi_percent"] is not None)
    assert low["roi_percent"] >= high["roi_percent"] - 1e-9 * max(1.0, abs(high["roi_percent"]))
    assert low["cost_per_day"] <= high["cost_per_day"]


NUMBERS = (
    "machines",
    "capex",
    "cost_per_day",
    "energy_kwh_per_day",
    "energy_cost_per_day",
    "cost_per_million_tokens",
    "roi_percent",
    "payback_days",
)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=150, deadline=None)
@given(
    candidates(),
    serve_models(),
    st.lists(train_models(), max_size=1),
    st.floats(min_value=0.01, max_value=1.0),
    st.floats(min_value=0.01, max_value=1.0),
)
def test_a_measured_efficiency_replaces_the_default_in_every_figure_it_touches(c, m, train, serve_eff, train_eff):
    w = workload([m], train)
    serve_label = f.size_class_for(m.params_b).label
    measured = {("serve", serve_label, c.platform): Efficiency(serve_eff, "measured", "jobs #1, #2")}
    for t in train:
        measured[("train", f.size_class_for(t.params_b).label, c.platform)] = Efficiency(train_eff, "measured", "#3")
    with_measured = planner.evaluate(c, w, measured)
    # The same plan with the defaults set to those values: every figure must agree.
    defaults = {c.platform: Efficiency(serve_eff, "default", "patched")}
    patched_train = Efficiency(train_eff, "default", "patched") if train else planner.DEFAULT_TRAIN_EFFICIENCY
    with (
        mock.patch.dict(planner.DEFAULT_SERVE_EFFICIENCY, defaults),
        mock.patch.object(planner, "DEFAULT_TRAIN_EFFICIENCY", patched_train),
    ):
        with_default = planner.evaluate(c, w, {})
        unified_default = planner.unified_vs_discrete(w, [c], {}, m.params_b, m.precision, m.context_tokens)
    unified_measured = planner.unified_vs_discrete(w, [c], measured, m.params_b, m.precision, m.context_tokens)

    for key in NUMBERS:
        assert _same(with_measured[key], with_default[key]), key
    for a, b in zip(with_measured["parts"], with_default["parts"], strict=True):
        assert _same(a.get("tokens_per_s"), b.get("tokens_per_s"))
        assert a.get("machines") == b.get("machines")
        if a.get("efficiency") is not None:
            # Every estimate the efficiency entered says it was measured here, and no default is left.
            assert a["basis"] == "estimated, measured efficiency"
            assert "jobs #1, #2" in a["detail"] or "#3" in a["detail"]
    for key in ("tokens_per_s", "cost_per_million_tokens"):
        assert _same(unified_measured[0][key], unified_default[0][key]), key
    assert all(e["basis"] == "measured" for e in planner.efficiency_table(w, measured) if e["platform"] == c.platform)
