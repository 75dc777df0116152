"""Report figures against the seeded history of tests/seed.py, whose docstring works them out by hand."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest

from dashboard.reports import report

from . import seed

UTC = UTC
DAY2 = seed.DAY1 + timedelta(days=1)
DAY3 = DAY2 + timedelta(days=1)


@pytest.fixture(autouse=True)
def _utc(settings):
    settings.TIME_ZONE = "UTC"  # RoI's days are the server's days


def devices(period: dict) -> dict:
    return {d["name"].split(" · ")[0]: d for d in period["devices"]}


@pytest.mark.django_db
def test_a_machines_day_matches_the_figures_worked_out_by_hand():
    m = seed.two_days()
    r = report.machine_report(m, DAY2, DAY3, idle_below_percent=10, now=DAY3)
    day = r["current"]
    assert day["source"] == "raw" and day["hours"] == 24
    gpu0, gpu1, cpu = devices(day)["GPU 0"], devices(day)["GPU 1"], devices(day)["CPU"]
    assert gpu0["mean_util_percent"] == pytest.approx(46.0)
    assert gpu0["p95_util_percent"] == pytest.approx(87.4)  # 84 + 0.85 × (88 − 84)
    assert (gpu0["busy_hours"], gpu0["idle_hours"]) == (21.0, 3.0)  # 0, 4 and 8 % are idle
    assert gpu0["mean_power_watts"] == pytest.approx(330.0)
    assert gpu0["p95_power_watts"] == pytest.approx(537.0)
    assert gpu0["energy_kwh"] == pytest.approx(7.92)
    assert (gpu1["mean_util_percent"], gpu1["p95_util_percent"], gpu1["busy_hours"], gpu1["energy_kwh"]) == (
        pytest.approx(40.0),
        pytest.approx(40.0),
        24.0,
        pytest.approx(7.2),
    )
    assert cpu["mean_util_percent"] == pytest.approx(16.25)
    assert cpu["p95_util_percent"] == pytest.approx(50.0)
    assert (cpu["busy_hours"], cpu["idle_hours"], cpu["energy_kwh"]) == (6.0, 18.0, None)

    # Tokens: the larger of the two sources per window, as RoI counts them.
    assert day["tokens"] == {"prompt": 1_200_000, "generated": 2_400_000, "train": 1_200_000}
    assert day["jobs"]["jobs"] == 2 and day["jobs"]["outcomes"] == {"succeeded": 1, "failed": 1}
    assert [a["name"] for a in day["jobs"]["rows"]] == ["chat", "finetune"]

    money = day["money"]
    assert money["currency"] == "USD" and r["currency"] == "USD"
    assert money["energy_kwh"] == pytest.approx(15.12)
    assert money["energy_cost"] == pytest.approx(4.536)  # 15.12 kWh × 1.2 × 0.25
    assert money["cost"] == pytest.approx(124.536)  # 100 amortisation + 20 fixed + energy
    assert money["idle_cost"] == pytest.approx(0.0)
    assert money["value"] == pytest.approx(36.0)  # 2.4 M × 10 USD/M + 6 GPU-hours × 2 USD
    assert money["roi_percent"] == pytest.approx((36 - 124.536) / 124.536 * 100)


@pytest.mark.django_db
def test_the_previous_period_of_equal_length_sits_beside_it():
    m = seed.two_days()
    r = report.machine_report(m, DAY2, DAY3, now=DAY3)
    before = r["previous"]
    assert (before["start"], before["end"]) == (seed.DAY1, DAY2)
    gpu0, cpu = devices(before)["GPU 0"], devices(before)["CPU"]
    assert (gpu0["mean_util_percent"], gpu0["p95_util_percent"], gpu0["busy_hours"], gpu0["idle_hours"]) == (
        2.0,
        2.0,
        0.0,
        24.0,
    )
    assert gpu0["energy_kwh"] == pytest.approx(1.92)
    assert cpu["idle_hours"] == 24.0
    assert before["jobs"]["outcomes"] == {"cancelled": 1}
    assert before["tokens"] == {"prompt": 0, "generated": 0, "train": 0}
    assert before["money"]["cost"] == pytest.approx(121.152)
    assert before["money"]["idle_cost"] == pytest.approx(121.152)  # a whole idle day: all of it
    assert before["money"]["roi_percent"] == pytest.approx(-100.0)
    # Paired up for the page, with the change in each machine-wide figure.
    assert r["rows"][0]["now"]["mean_util_percent"] == 46.0 and r["rows"][0]["before"]["mean_util_percent"] == 2.0
    change = {row["label"]: row["change"] for row in r["summary"]}
    assert change["Cost"] == pytest.approx(124.536 - 121.152)
    assert change["… cancelled"] == -1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("days_later", "source", "label"),
    [(0, "raw", "agent windows"), (20, "minute", "minute rollups"), (120, "hour", "hour rollups")],
)
def test_older_periods_read_coarser_rollups_and_say_so(days_later, source, label):
    # Past 14 days raw windows are gone, past 90 the minutes: the figures come from what is kept.
    # Here each minute and hour holds one window, so the figures are the same at every level.
    m = seed.two_days()
    r = report.machine_report(m, DAY2, DAY3, now=DAY3 + timedelta(days=days_later))
    assert r["current"]["source"] == source
    assert r["current"]["source_label"].startswith(label)
    gpu0, cpu = devices(r["current"])["GPU 0"], devices(r["current"])["CPU"]
    assert gpu0["mean_util_percent"] == pytest.approx(46.0)
    assert gpu0["p95_util_percent"] == pytest.approx(87.4)
    assert (gpu0["busy_hours"], gpu0["idle_hours"]) == (21.0, 3.0)
    assert gpu0["energy_kwh"] == pytest.approx(7.92)
    assert cpu["p95_util_percent"] == pytest.approx(50.0)


@pytest.mark.django_db
def test_a_period_before_the_machine_went_into_service_has_no_money():
    m = seed.two_days()
    r = report.machine_report(m, seed.DAY1, DAY2, now=DAY3)
    assert r["previous"]["money"]["cost"] is None
    assert r["previous"]["money"]["problems"] == ["the machine was not in service yet"]
    assert devices(r["previous"])["GPU 0"]["mean_util_percent"] is None


@pytest.mark.django_db
def test_the_fleet_report_ranks_machines_by_idle_cost_and_by_roi():
    seed.fleet()
    day1 = report.fleet_report(seed.DAY1, DAY2, now=DAY3)
    assert [r["machine"] for r in day1["by_idle_cost"]] == ["gpu-01", "gpu-02", "gpu-03"]
    assert day1["by_idle_cost"][0]["idle_cost"] == pytest.approx(121.152)
    assert day1["by_idle_cost"][1]["idle_cost"] == pytest.approx(0.0)  # silent: nothing says it idled
    assert day1["by_idle_cost"][2]["idle_cost"] is None  # no cost profile: last
    assert day1["by_idle_cost"][0]["mean_gpu_util_percent"] == pytest.approx(2.0)

    day2 = report.fleet_report(DAY2, DAY3, now=DAY3)
    assert [(r["machine"], r["roi_percent"]) for r in day2["by_roi"]] == [
        ("gpu-01", pytest.approx(-71.0927, abs=1e-4)),
        ("gpu-02", pytest.approx(-100.0)),
        ("gpu-03", None),
    ]
    assert day2["by_roi"][1]["cost"] == pytest.approx(120.0)  # amortisation and fixed costs only
    assert day2["currencies"] == ["USD"]
