"""The economics API on seeded data (see seed.py for the numbers and how they were chosen)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils.dateparse import parse_datetime

from dashboard.economics.models import CostProfile, HardwareSpec, ValueRates

from . import seed

pytestmark = pytest.mark.django_db
approx = pytest.approx


@pytest.fixture(autouse=True)
def utc(settings):
    settings.TIME_ZONE = "UTC"


@pytest.fixture
def api(client, viewer):
    client.force_login(viewer)
    return client


def roi_of(api, name: str, **params) -> dict:
    params.setdefault("until", seed.today().isoformat())
    r = api.get(f"/api/v1/machines/{name}/roi", params)
    assert r.status_code == 200, r.content
    return r.json()


def test_the_roi_of_a_machine_adds_up_by_hand(api):
    seed.priced_machine()
    body = roi_of(api, "gpu-01")
    t = body["totals"]
    assert body["currency"] == "USD"
    assert [d["energy_kwh"] for d in body["days"]] == approx([24.0, 4.8, 0.0])
    # energy: 24 kWh × 1.2 × 0.25 = 7.20 on day 1, 4.8 × 1.2 × 0.25 = 1.44 on day 2
    assert t["energy_kwh"] == approx(28.8)
    assert t["energy_estimated_kwh"] == 0
    assert t["energy_cost"] == approx(8.64)
    # 3 days × 100 amortisation, 3 × 20 fixed
    assert t["amortisation"] == approx(300)
    assert t["fixed"] == approx(60)
    assert t["cost"] == approx(368.64)
    # 12 M tokens (the engine's smaller count of the same windows is not added) × 10 per M = 120,
    # plus 12 GPU-hours of training × 2 = 24
    assert t["generated_tokens"] == 12_000_000
    assert t["train_gpu_hours"] == approx(12)
    assert t["value_serve"] == approx(120)
    assert t["value_train"] == approx(24)
    assert t["value"] == approx(144)
    # (144 − 368.64) / 368.64 = −60.94 %; 368.64 / 12 M tokens = 30.72 per million
    assert t["roi_percent"] == approx(-60.938, abs=1e-3)
    assert t["cost_per_million_tokens"] == approx(30.72)
    # day 2 is idle (2 % < 10 %): 24 h × (100 + 20) / 24 h + its energy 1.44 = 121.44; day 3 is unmonitored
    assert t["idle_hours"] == approx(24)
    assert t["idle_cost"] == approx(121.44)
    assert [d["cum_cost"] for d in body["days"]] == approx([127.2, 248.64, 368.64])
    assert [d["cum_value"] for d in body["days"]] == approx([120, 144, 144])
    # value never caught up (120 < 127.2 on day 1): no break-even
    assert body["break_even"] is None


def test_payback_is_projected_at_the_net_rate_of_the_days_with_data(api):
    seed.priced_machine()
    body = roi_of(api, "gpu-01")
    # Day 3 has no telemetry: it says nothing about earnings, so the rate rests on days 1 and 2:
    # 144 − 8.64 − 40 = 95.36 over 2 days = 47.68 a day (counting day 3 as earning 0 would give
    # 25.12 and push payback out by almost two years). Net so far 144 − 8.64 − 60 = 75.36;
    # (36,525 − 75.36) / 47.68 = 764.46 days after the end of the range.
    assert body["payback"]["status"] == "projected"
    assert body["payback"]["days_used"] == 2
    assert body["payback"]["recent_net_per_day"] == approx(47.68)
    when = parse_datetime(body["payback"]["date"])
    assert (when - seed.today()) / timedelta(days=1) == approx(764.46, abs=0.01)


def test_since_chooses_the_days_but_cumulative_figures_stay_lifetime(api):
    seed.priced_machine()
    body = roi_of(api, "gpu-01", since=(seed.today() - timedelta(days=2)).isoformat())
    assert len(body["days"]) == 2
    # days 2 and 3: 200 + 40 + 1.44
    assert body["totals"]["cost"] == approx(241.44)
    assert body["days"][-1]["cum_cost"] == approx(368.64)


def test_a_higher_idle_threshold_counts_more_idle_hours(api):
    seed.priced_machine()
    assert roi_of(api, "gpu-01", idle_below_percent=90)["totals"]["idle_hours"] == approx(48)
    assert roi_of(api, "gpu-01", idle_below_percent=1)["totals"]["idle_hours"] == 0


def test_break_even_is_marked_when_value_overtakes_cost(api):
    m = seed.priced_machine()
    ValueRates.objects.filter(machine=None).update(serve_per_million_generated=Decimal("40"))
    body = roi_of(api, m.name)
    # value 480 + 24 = 504 > 368.64 at the end, and ahead since day 1 (480 ≥ 127.2)
    assert body["totals"]["roi_percent"] == approx((504 - 368.64) / 368.64 * 100)
    assert body["break_even"]["t"] == body["days"][0]["end"]


def test_a_machine_without_a_price_is_told_to_set_a_cost_profile(api):
    seed.machine_with("gpu-09", 2)  # H100s: the catalogue knows no price
    body = roi_of(api, "gpu-09")
    assert body["profile"] is None
    assert body["totals"]["cost"] is None and body["totals"]["roi_percent"] is None
    assert any("set a cost profile" in p for p in body["problems"])
    assert body["admin_url"].startswith("/admin/economics/costprofile/add/")


def test_a_profile_comes_from_the_catalogue_price_where_one_is_known(api):
    m = seed.machine_with("rtx-01", 2, model="NVIDIA GeForce RTX 4090", mem_bytes=24 * 10**9, power_limit=None)
    # no power sensor: 450 W rated (catalogue) at 50 % = 450 × 0.55 = 247.5 W = 0.2475 kWh an hour each
    seed.hours(m, seed.today() - timedelta(days=3), 1, None, 50.0)
    body = roi_of(api, "rtx-01")
    assert body["profile"]["source"] == "catalogue"
    assert body["profile"]["purchase_price"] == 2 * 1599
    assert body["profile"]["electricity_price_per_kwh"] is None
    assert body["totals"]["energy_kwh"] == approx(0.495)
    assert body["totals"]["energy_estimated_kwh"] == approx(0.495)
    assert body["totals"]["energy_cost"] == 0
    assert any("no electricity price" in p for p in body["problems"])


def test_an_assembly_profile_serves_every_machine_of_that_assembly(api):
    m = seed.machine_with("gpu-10", 2)
    CostProfile.objects.create(
        name="H100 pairs",
        assembly="2 × H100 80GB HBM3 · 256 GiB RAM",
        currency="EUR",
        purchase_price=Decimal("1000"),
        electricity_price_per_kwh=Decimal("0.3"),
    )
    body = roi_of(api, m.name)
    assert body["profile"]["source"] == "assembly"
    assert body["currency"] == "EUR"


def test_value_is_not_compared_across_currencies(api):
    m = seed.priced_machine()
    ValueRates.objects.create(machine=m, currency="EUR", serve_per_million_generated=Decimal("1"))
    body = roi_of(api, m.name)
    assert body["totals"]["value"] is None and body["totals"]["roi_percent"] is None
    assert any("EUR" in p and "USD" in p for p in body["problems"])


def test_a_user_row_in_the_catalogue_wins_over_the_shipped_one(api):
    assert HardwareSpec.objects.filter(shipped=True).count() == 13
    HardwareSpec.objects.create(name="Our H100 deal", match_pattern="H100", launch_price_usd=20000)
    seed.machine_with("gpu-11", 1)
    assert roi_of(api, "gpu-11")["profile"]["purchase_price"] == 20000


def test_bad_parameters_get_a_400_with_one_sentence(api):
    seed.priced_machine()
    for params, word in (
        ({"since": "yesterday"}, "since"),
        ({"idle_below_percent": "150"}, "idle_below_percent"),
        ({"since": "1h", "until": "2h"}, "since"),
    ):
        r = api.get("/api/v1/machines/gpu-01/roi", params)
        assert r.status_code == 400 and word in r.json()["error"], params
    r = api.get("/api/v1/machines/gpu-01/capacity", {"batch": 0})
    assert r.status_code == 400 and "batch" in r.json()["error"]
    assert api.get("/api/v1/machines/nope/roi").json() == {"error": "not found"}


def test_the_api_needs_a_user(client, db):
    seed.priced_machine()
    for url in (
        "/api/v1/machines/gpu-01/roi",
        "/api/v1/machines/gpu-01/capacity",
        "/api/v1/machines/gpu-01/share",
        "/api/v1/assemblies",
    ):
        assert client.get(url).status_code == 401, url


def test_capacity_of_an_m2_ultra_and_the_measured_rate_beside_its_bound(api):
    m = seed.machine_with("mac-01", 1, model="Apple M2 Ultra", mem_bytes=192 * 10**9, vendor="apple", power_limit=None)
    t0 = seed.hours_ago(2)
    j = seed.job(m, "mistral-7b-int4", "serve", t0, t0 + timedelta(seconds=100), [0])
    for i in range(10):  # 120 tokens/s
        seed.tokens(m, i + 1, t0 + timedelta(seconds=10 * (i + 1)), j, generated=1200)
    body = api.get("/api/v1/machines/mac-01/capacity").json()
    assert body["bandwidth_gb_s"] == 800
    assert body["usable_memory_fraction"] == 0.75  # 144 GB of 192 for the GPU
    rows = {r["size"]: r for r in body["sizes"]}
    assert rows["70B"]["serve"]["int4"]["fits"] and rows["70B"]["serve"]["fp16"]["fits"]  # 142.5 ≤ 144 GB
    assert not rows["405B"]["serve"]["int4"]["fits"]  # 203 GB
    assert not rows["13B"]["train"]["full"]["fits"] and rows["13B"]["train"]["lora"]["fits"]
    measured = rows["7-8B"]["measured"][0]
    # "7b" at int4: 800 / (3.5 + 0.537 GB) = 198.2 tokens/s bound; 120 of it = 60.5 %
    assert measured["precision"] == "int4"
    assert measured["tokens_per_s"] == approx(120)
    assert measured["bound_tokens_per_s"] == approx(198.2, abs=0.1)
    assert measured["efficiency_percent"] == approx(60.5, abs=0.1)


def test_capacity_uses_the_jobs_stated_model_over_a_misleading_name(api):
    m = seed.machine_with("mac-02", 1, model="Apple M2 Ultra", mem_bytes=192 * 10**9, vendor="apple", power_limit=None)
    t0 = seed.hours_ago(2)
    stated = seed.job(m, "llama-70b-int4-eval", "serve", t0, t0 + timedelta(seconds=100), [0])
    stated.model_params_b, stated.precision = 7, "fp16"
    stated.save()
    guessed = seed.job(m, "mistral-7b-int4", "serve", t0, t0 + timedelta(seconds=100), [0])
    for i in range(10):
        seed.tokens(m, i + 1, t0 + timedelta(seconds=10 * (i + 1)), stated, generated=300)  # 30 tokens/s
        seed.tokens(m, i + 1, t0 + timedelta(seconds=10 * (i + 1)), guessed, generated=1200)
    rows = {r["size"]: r for r in api.get("/api/v1/machines/mac-02/capacity").json()["sizes"]}
    assert rows["70B"]["measured"] == []  # the name says 70b, the job says 7
    measured = {r["job_id"]: r for r in rows["7-8B"]["measured"]}
    row = measured[stated.pk]
    assert (row["params_b"], row["params_source"], row["precision"], row["precision_source"]) == (
        7,
        "job",
        "fp16",
        "job",
    )
    # 7 B at fp16: 800 / (14 + 0.537 GB) = 55.03 tokens/s bound, not the 198 of int4
    assert row["bound_tokens_per_s"] == approx(55.03, abs=0.01)
    assert row["efficiency_percent"] == approx(30 / 55.03 * 100, abs=0.1)
    other = measured[guessed.pk]
    assert (other["params_source"], other["precision"], other["precision_source"]) == ("name", "int4", "name")


def test_a_measured_job_uses_its_own_context_and_falls_back_per_field(api):
    m = seed.machine_with("mac-03", 1, model="Apple M2 Ultra", mem_bytes=192 * 10**9, vendor="apple", power_limit=None)
    t0 = seed.hours_ago(2)
    j = seed.job(m, "qwen-7b-int4", "serve", t0, t0 + timedelta(seconds=100), [0])
    j.context_tokens = 32768  # 8 × the page's 4096: 4.295 GB of KV cache
    j.save()
    for i in range(10):
        seed.tokens(m, i + 1, t0 + timedelta(seconds=10 * (i + 1)), j, generated=1200)
    row = next(r for r in api.get("/api/v1/machines/mac-03/capacity").json()["sizes"] if r["size"] == "7-8B")[
        "measured"
    ][0]
    assert (row["params_source"], row["precision"], row["precision_source"]) == ("name", "int4", "name")
    assert row["context_tokens"] == 32768
    assert row["bound_tokens_per_s"] == approx(800 / (3.5 + 4.295), abs=0.05)


def test_capacity_takes_context_and_batch(api):
    seed.machine_with("gpu-12", 1)
    small = api.get("/api/v1/machines/gpu-12/capacity").json()
    big = api.get("/api/v1/machines/gpu-12/capacity", {"context_tokens": 131072, "batch": 8}).json()
    assert small["context_tokens"] == 4096 and small["batch"] == 1
    eight_small = next(r for r in small["sizes"] if r["size"] == "7-8B")["serve"]["fp16"]
    eight_big = next(r for r in big["sizes"] if r["size"] == "7-8B")["serve"]["fp16"]
    assert eight_small["fits"] and not eight_big["fits"]  # 16 GB of KV per sequence × 8


def test_share_or_split_gives_the_verdict_and_the_runs_it_rests_on(api):
    seed.shared_machine()
    body = api.get("/api/v1/machines/gpu-02/share").json()
    assert body["serve_alone_tokens_per_s"] == approx(10)
    assert body["serve_together_tokens_per_s"] == approx(8.2)
    assert body["train_alone_tokens_per_s"] == approx(5)
    assert body["train_together_tokens_per_s"] == approx(3.5)
    assert body["combined_machines"] == approx(0.82 + 0.7)
    assert body["verdict"].startswith("Sharing costs serving 18% and gives training 0.7 of a machine for free")
    assert body["decision"] == "share"
    assert sorted(r["name"] for r in body["runs"]) == ["serve alone", "serve together", "train"]


def test_the_runs_of_a_share_verdict_name_their_model_size_and_where_it_came_from(api):
    from dashboard.jobs.models import Job

    seed.shared_machine()
    Job.objects.filter(name="serve alone").update(model_params_b=8)
    Job.objects.filter(name="train").update(name="train-1.5b")
    runs = {r["name"]: r for r in api.get("/api/v1/machines/gpu-02/share").json()["runs"]}
    assert (runs["serve alone"]["params_b"], runs["serve alone"]["params_source"]) == (8, "job")
    assert (runs["train-1.5b"]["params_b"], runs["train-1.5b"]["params_source"]) == (1.5, "name")
    assert (runs["serve together"]["params_b"], runs["serve together"]["params_source"]) == (None, None)


def test_share_or_split_says_what_to_run_when_data_is_missing(api):
    seed.priced_machine()  # served alone for a day, trained without tokens, never together
    body = api.get("/api/v1/machines/gpu-01/share", {"since": "7d"}).json()
    assert body["decision"] is None
    assert "python -m hwprobe.workloads train" in body["verdict"]
    assert "both together" in body["verdict"]


def test_assemblies_are_compared_with_the_best_marked(api):
    fast = seed.machine_with("h100-a", 2)
    slow = seed.machine_with("rtx-a", 1, model="NVIDIA GeForce RTX 4090", mem_bytes=24 * 10**9, power_limit=450)
    t0 = seed.hours_ago(3)
    for m, gen, watts, gpus in ((fast, 4000, 500.0, 2), (slow, 1000, 400.0, 1)):
        j = seed.job(m, "serve 8b", "serve", t0, t0 + timedelta(seconds=200), list(range(gpus)))
        for i in range(1, 21):
            ts = t0 + timedelta(seconds=10 * i)
            seed.tokens(m, i, ts, j, generated=gen)
            seed.gpu_window(m, i, ts, watts, gpus=gpus)
    body = api.get("/api/v1/assemblies", {"since": "1d"}).json()
    rows = {r["assembly"]: r for r in body["assemblies"]}
    h100 = rows["2 × H100 80GB HBM3 · 256 GiB RAM"]
    rtx = rows["1 × GeForce RTX 4090 · 256 GiB RAM"]
    # 4,000 tokens per 10 s = 400 tok/s; 4,000 / (2 × 500 W × 10 s) = 0.4 tok/J
    assert h100["serve_tokens_per_s"] == approx(400)
    assert h100["serve_tokens_per_joule"] == approx(0.4)
    # 1,000 / 10 s = 100 tok/s; 1,000 / (400 W × 10 s) = 0.25 tok/J
    assert rtx["serve_tokens_per_joule"] == approx(0.25)
    assert "serve_tokens_per_s" in h100["best"] and "serve_tokens_per_joule" in h100["best"]
    assert h100["train_tokens_per_s"] is None
    # the 4090 has a catalogue price (a profile), the H100 none: only the 4090 has a cost figure
    assert rtx["cost_per_million_tokens"] is not None and h100["cost_per_million_tokens"] is None
