"""Rollups against raw data, and the series API's choice of resolution."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conftest import make_batch
from dashboard.fleet import rollup
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import GpuRollup, SystemRollup
from dashboard.fleet.payload import Batch
from dashboard.fleet.series import machine_series, resolution_for

UTC = UTC
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC).timestamp()


def ingest(machine, seqs, t_end, **kw):
    store_batch(machine, Batch.model_validate(make_batch(seqs, ts=t_end, **kw)))


@pytest.mark.django_db
def test_minute_rollups_take_min_of_mins_mean_of_means_max_of_maxes(machine):
    # 6 windows at T0+10 .. T0+60 s: five land in the 10:00 minute, the last at 10:01:00.
    store_batch(
        machine,
        Batch.model_validate(
            {"samples": [{**make_batch([i], ts=T0 + 10 * i, cpu=10.0 * i)["samples"][0]} for i in range(1, 7)]}
        ),
    )
    rollup.catch_up()
    first = SystemRollup.objects.get(machine=machine, resolution_s=60, bucket=datetime(2026, 11, 20, 10, 0, tzinfo=UTC))
    assert first.count == 50  # five windows of ten 1 s snapshots
    assert first.cpu_percent_mean == pytest.approx(30.0)  # mean of 10, 20, 30, 40, 50
    assert first.cpu_percent_min == 5.0 and first.cpu_percent_max == 55.0
    hour = SystemRollup.objects.get(machine=machine, resolution_s=3600)
    assert hour.count == 60 and hour.cpu_percent_max == 65.0
    assert GpuRollup.objects.filter(machine=machine, resolution_s=60).count() == 4  # 2 minutes x 2 GPUs


@pytest.mark.django_db
def test_rolling_up_twice_gives_the_same_rows(machine):
    ingest(machine, range(1, 13), T0 + 120)
    rollup.catch_up()
    before = sorted(SystemRollup.objects.values_list("bucket", "resolution_s", "count", "cpu_percent_mean"))
    rollup.RollupState.objects.all().delete()  # forget the watermark: everything is redone
    rollup.catch_up()
    rollup.catch_up()
    after = sorted(SystemRollup.objects.values_list("bucket", "resolution_s", "count", "cpu_percent_mean"))
    assert before == after


@pytest.mark.django_db
def test_a_late_batch_is_folded_into_its_old_buckets(machine):
    ingest(machine, [1, 2], T0 + 20)
    rollup.catch_up()
    ingest(machine, [3], T0 + 30, cpu=90.0)  # replayed from a spool later
    rollup.catch_up()
    minute = SystemRollup.objects.get(machine=machine, resolution_s=60)
    assert minute.count == 30 and minute.cpu_percent_max == 95.0


def test_a_seven_day_range_never_reads_raw_rows():
    assert resolution_for(timedelta(hours=1)) == 0
    assert resolution_for(timedelta(hours=24)) == 60
    assert resolution_for(timedelta(days=7)) == 3600


@pytest.mark.django_db
def test_series_reads_raw_rows_for_an_hour_with_one_series_per_gpu(machine):
    ingest(machine, range(1, 31), T0 + 300)
    data = machine_series(
        machine, "gpu.util_percent", datetime.fromtimestamp(T0, UTC), datetime.fromtimestamp(T0 + 3600, UTC)
    )
    assert data["unit"] == "%" and data["resolution_s"] is None
    assert [s["device"] for s in data["series"]] == [0, 1]
    assert len(data["series"][0]["t"]) == 30 and data["series"][0]["mean"][0] == 50.0
    assert data["series"][0]["name"] == "GPU 0 · H100 80GB HBM3"


@pytest.mark.django_db
def test_a_step_of_several_windows_draws_min_of_mins_mean_of_means_max_of_maxes(machine):
    # Three hours draw 20 s steps, two 10 s windows each; the windows end at T0+10 ... T0+60.
    values = (10.0, 20.0, 30.0, 40.0, 51.0, 60.0)
    samples = [make_batch([i], ts=T0 + 10 * i, cpu=v, util=v)["samples"][0] for i, v in enumerate(values, start=1)]
    store_batch(machine, Batch.model_validate({"samples": samples}))
    since, until = datetime.fromtimestamp(T0, UTC), datetime.fromtimestamp(T0 + 3 * 3600, UTC)

    gpu = machine_series(machine, "gpu.util_percent", since, until)
    assert (gpu["step_s"], gpu["resolution_s"]) == (20, None)
    # Steps [T0, T0+20), [T0+20, T0+40), ...: windows 10 | 20, 30 | 40, 51 | 60, drawn mid-step.
    assert gpu["series"][0]["t"] == [int(T0 + m) * 1000 for m in (10, 30, 50, 70)]
    assert gpu["series"][0]["mean"] == [10.0, 25.0, 45.5, 60.0]
    assert gpu["series"][0]["min"] == [0.0, 10.0, 30.0, 50.0]  # each window's min is its mean less 10
    assert gpu["series"][0]["max"] == [20.0, 40.0, 61.0, 70.0]
    assert gpu["series"][1] == {**gpu["series"][0], "device": 1, "name": gpu["series"][1]["name"]}

    cpu = machine_series(machine, "system.cpu_percent", since, until)["series"]
    assert [(s["min"], s["mean"], s["max"]) for s in cpu] == [
        ([5.0, 15.0, 35.0, 55.0], [10.0, 25.0, 45.5, 60.0], [15.0, 35.0, 56.0, 65.0])
    ]
    # A value kept once per window (not min/mean/max) draws its mean; a metric a machine never
    # reports (wired memory is a Mac's) draws no series at all.
    total = machine_series(machine, "gpu.mem_total_bytes", since, until)["series"][0]
    assert total["mean"] == [85520809984.0] * 4 and "min" not in total
    assert machine_series(machine, "system.mem_wired_bytes", since, until)["series"] == []


@pytest.mark.django_db
def test_series_for_a_week_reads_hour_rollups(machine):
    ingest(machine, range(1, 31), T0 - 5 * 86400)  # data through the week: hour rollups suit it
    ingest(machine, range(31, 61), T0 + 300)
    rollup.catch_up()
    until = datetime.fromtimestamp(T0 + 3600, UTC)
    with CaptureQueriesContext(connection) as queries:
        data = machine_series(machine, "system.cpu_percent", until - timedelta(days=7), until)
    assert data["resolution_s"] == 3600
    assert len(data["series"]) == 1 and set(data["series"][0]["max"]) == {30.0}
    # Raw windows are asked only where the data starts (one row), the values come from rollups.
    raw = [q["sql"] for q in queries.captured_queries if "fleet_systemsample" in q["sql"]]
    assert len(raw) == 1 and "LIMIT 1" in raw[0]
    assert any("fleet_systemrollup" in q["sql"] for q in queries.captured_queries)


@pytest.mark.django_db
def test_series_api_answers_json_and_explains_bad_parameters(client, machine, viewer):
    ingest(machine, range(1, 4), None)
    client.force_login(viewer)
    r = client.get(f"/api/v1/machines/{machine.name}/series", {"metric": "system.mem_used_bytes", "since": "1h"})
    assert r.status_code == 200
    body = r.json()
    assert body["unit"] == "B" and len(body["series"][0]["t"]) == 3
    bad = client.get(f"/api/v1/machines/{machine.name}/series", {"metric": "gpu.bogus"})
    assert bad.status_code == 400 and "unknown metric" in bad.json()["error"]
    bad = client.get(f"/api/v1/machines/{machine.name}/series", {"metric": "gpu.util_percent", "since": "soon"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("since:")
    assert client.get("/api/v1/machines/nope/series", {"metric": "gpu.util_percent"}).status_code == 404


def six_windows(machine, cpu_and_util=(10.0, 20.0, 30.0, 40.0, 50.0, 60.0)) -> None:
    """Windows ending at 10:00:10 ... 10:00:50 (the 10:00 minute) and 10:01:00, CPU and GPU alike."""
    samples = []
    for i, v in enumerate(cpu_and_util, start=1):
        samples.append(make_batch([i], ts=T0 + 10 * i, cpu=v, util=v)["samples"][0])
    store_batch(machine, Batch.model_validate({"samples": samples}))


@pytest.mark.django_db
def test_rollups_keep_the_p95_of_the_raw_window_means(machine):
    six_windows(machine)
    rollup.catch_up()  # T0 is in the past: its hour is over and gets the exact p95
    ten = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    minute = SystemRollup.objects.get(machine=machine, resolution_s=60, bucket=ten)
    # 10, 20, 30, 40, 50: rank 0.95 × 4 = 3.8 -> 40 + 0.8 × 10 = 48
    assert minute.cpu_percent_p95 == pytest.approx(48.0)
    assert (
        SystemRollup.objects.get(machine=machine, resolution_s=60, bucket=ten + timedelta(minutes=1)).cpu_percent_p95
        == 60.0
    )
    # The hour: 10 ... 60, rank 0.95 × 5 = 4.75 -> 50 + 0.75 × 10 = 57.5 (not a p95 of the minutes' p95s)
    assert SystemRollup.objects.get(machine=machine, resolution_s=3600).cpu_percent_p95 == pytest.approx(57.5)
    gpu = GpuRollup.objects.get(machine=machine, resolution_s=3600, gpu_index=1)
    assert gpu.util_percent_p95 == pytest.approx(57.5)
    assert gpu.power_watts_p95 == pytest.approx(350.0) and gpu.temp_c_p95 == pytest.approx(55.0)
    gpu_minute = GpuRollup.objects.get(machine=machine, resolution_s=60, gpu_index=0, bucket=ten)
    assert gpu_minute.util_percent_p95 == pytest.approx(48.0)


@pytest.mark.django_db
def test_an_hour_in_progress_takes_the_p95_of_its_minute_means_until_it_is_over(machine):
    six_windows(machine)
    lo, hi = datetime.fromtimestamp(T0 + 10, UTC), datetime.fromtimestamp(T0 + 60, UTC)
    rollup.rollup_range([machine.pk], lo, hi, now=datetime.fromtimestamp(T0 + 90, UTC))
    # Minute means 30 and 60: rank 0.95 -> 30 + 0.95 × 30 = 58.5
    assert SystemRollup.objects.get(machine=machine, resolution_s=3600).cpu_percent_p95 == pytest.approx(58.5)
    rollup.rollup_range([machine.pk], lo, hi, now=datetime.fromtimestamp(T0 + 3600, UTC))
    assert SystemRollup.objects.get(machine=machine, resolution_s=3600).cpu_percent_p95 == pytest.approx(57.5)


@pytest.mark.django_db
def test_rolling_up_twice_gives_the_same_p95s(machine):
    six_windows(machine, (5.0, 95.0, 35.0, 80.0, 12.0, 61.0))
    rollup.catch_up()
    columns = ("resolution_s", "bucket", "gpu_index", "count", "util_percent_p95", "power_watts_p95", "temp_c_p95")
    before = sorted(GpuRollup.objects.values_list(*columns))
    system = sorted(SystemRollup.objects.values_list("resolution_s", "bucket", "cpu_percent_p95"))
    rollup.RollupState.objects.all().delete()
    rollup.catch_up()
    rollup.catch_up()
    assert sorted(GpuRollup.objects.values_list(*columns)) == before
    assert sorted(SystemRollup.objects.values_list("resolution_s", "bucket", "cpu_percent_p95")) == system
    # 5, 12, 35, 61, 80, 95: rank 4.75 -> 80 + 0.75 × 15 = 91.25
    assert [p for r, _, p in system if r == 3600] == [pytest.approx(91.25)]


@pytest.mark.django_db
def test_a_late_window_in_an_hour_whose_raw_rows_are_gone_keeps_the_hours_p95(machine, settings):
    from django.utils import timezone

    from dashboard.fleet import retention
    from dashboard.fleet.models import GpuSample, SystemSample

    six_windows(machine)
    for model in (SystemSample, GpuSample):  # received an hour ago: well behind the rollup watermark
        model.objects.update(received_at=timezone.now() - timedelta(hours=1))
    rollup.catch_up()
    settings.RETENTION_RAW_DAYS = 1
    retention.purge(datetime.fromtimestamp(T0, UTC) + timedelta(days=3))
    assert not SystemSample.objects.exists()
    store_batch(machine, Batch.model_validate({"samples": [make_batch([7], ts=T0 + 600, cpu=1.0)["samples"][0]]}))
    rollup.catch_up()
    hour = SystemRollup.objects.get(machine=machine, resolution_s=3600)
    assert hour.count == 70  # the late window is counted...
    assert hour.cpu_percent_p95 == pytest.approx(57.5)  # ...but one window alone does not make the hour's p95


def received(machine, seq, ts, at, **kw):
    """A window stamped ``ts`` that the server stored at ``at``."""
    store_batch(machine, Batch.model_validate(make_batch([seq], ts=ts.timestamp(), **kw)), now=at)


@pytest.mark.django_db
def test_a_run_recomputes_only_the_minutes_new_rows_landed_in_and_the_open_hour_when_due(machine):
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    received(machine, 1, start + timedelta(seconds=10), start + timedelta(seconds=11))
    rollup.catch_up(now=start + timedelta(seconds=15))
    rollup.catch_up(now=start + timedelta(seconds=50))  # past the margin: the next run does not look back at it
    minute = SystemRollup.objects.get(machine=machine, resolution_s=60, bucket=start)
    SystemRollup.objects.filter(pk=minute.pk).update(count=999)  # a run that rescanned would rewrite it

    received(machine, 2, start + timedelta(seconds=70), start + timedelta(seconds=71))  # the next minute
    rollup.catch_up(now=start + timedelta(seconds=75))
    assert SystemRollup.objects.get(pk=minute.pk).count == 999
    assert SystemRollup.objects.filter(machine=machine, resolution_s=60).count() == 2
    assert SystemRollup.objects.get(machine=machine, resolution_s=3600).count == 10  # waits for its refresh

    received(machine, 3, start + timedelta(seconds=130), start + timedelta(seconds=131))
    rollup.catch_up(now=start + rollup.HOUR_REFRESH + timedelta(seconds=80))
    assert SystemRollup.objects.get(machine=machine, resolution_s=3600).count == 999 + 20


@pytest.mark.django_db
def test_an_hour_that_ended_gets_its_final_figures_once_without_new_rows(machine):
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    for i, cpu in enumerate((10.0, 20.0, 90.0), start=1):
        at = start + timedelta(minutes=10 * i)
        received(machine, i, at, at + timedelta(seconds=1), cpu=cpu)
    rollup.catch_up(now=start + timedelta(minutes=31))  # hour in progress: p95 of minute means
    rollup.catch_up(now=start + timedelta(minutes=61))  # over, and nothing new: p95 of the raw window means
    hour = SystemRollup.objects.get(machine=machine, resolution_s=3600)
    assert hour.cpu_percent_p95 == pytest.approx(83.0)  # 20 + 0.9 * (90 - 20) over 10, 20, 90


def windows_by_gpu(machine, utils_by_window: list[tuple[float, ...]], start: float = T0) -> None:
    """One 10 s window per entry, from ``start`` + 10 s, each GPU's mean utilisation as given."""
    samples = []
    for i, utils in enumerate(utils_by_window, start=1):
        sample = make_batch([i], ts=start + 10 * i, gpus=len(utils))["samples"][0]
        for gpu, util in zip(sample["gpus"], utils, strict=True):
            gpu["util_percent"] = {"min": util, "mean": util, "max": util}
        samples.append(sample)
    store_batch(machine, Batch.model_validate({"samples": samples}))


@pytest.mark.django_db
def test_system_rollups_keep_the_mean_of_their_gpus_utilisation(machine):
    # Two windows in the 10:00 minute: GPU 0 at 20 then 40 (mean 30), GPU 1 at 60 then 80 (mean 70).
    windows_by_gpu(machine, [(20.0, 60.0), (40.0, 80.0)])
    rollup.catch_up()
    ten = datetime.fromtimestamp(T0, UTC)
    minute = SystemRollup.objects.get(machine=machine, resolution_s=60, bucket=ten)
    assert minute.gpu_util_percent_mean == pytest.approx(50.0)  # (30 + 70) / 2
    assert SystemRollup.objects.get(machine=machine, resolution_s=3600).gpu_util_percent_mean == pytest.approx(50.0)

    # A late window in the same minute: both buckets are recomputed, and their GPU mean with them.
    store_batch(machine, Batch.model_validate(make_batch([3], ts=T0 + 30, gpus=2, util=100.0)))
    rollup.catch_up()
    minute.refresh_from_db()
    gpus = GpuRollup.objects.filter(machine=machine, resolution_s=60, bucket=ten).values_list(
        "util_percent_mean", flat=True
    )
    assert sorted(gpus) == pytest.approx([160 / 3, 80.0])  # (20 + 40 + 100) / 3, (60 + 80 + 100) / 3
    assert minute.gpu_util_percent_mean == pytest.approx((160 / 3 + 80.0) / 2)


@pytest.mark.django_db
def test_gpu_means_touch_only_the_given_machines_resolution_and_range(machine):
    other = type(machine).objects.create(name="gpu-02")
    # Windows end at T0 + 10 s, 20 s, ...: 10:00 holds five at 10 %, 10:01 one at 10 % and five at 90 %.
    windows_by_gpu(machine, [(10.0,)] * 6 + [(90.0,)] * 6)
    windows_by_gpu(other, [(30.0,)] * 6)
    rollup.catch_up()
    SystemRollup.objects.update(gpu_util_percent_mean=None)

    one = datetime.fromtimestamp(T0 + 60, UTC)
    assert rollup.gpu_means([machine.pk], 60, one, one + timedelta(minutes=1)) == 1
    means = dict(
        SystemRollup.objects.filter(machine=machine, resolution_s=60).values_list("bucket", "gpu_util_percent_mean")
    )
    assert means == {
        datetime.fromtimestamp(T0, UTC): None,
        one: pytest.approx(460 / 6),
        one + timedelta(minutes=1): None,
    }
    assert not SystemRollup.objects.filter(machine=other).exclude(gpu_util_percent_mean=None).exists()
    assert SystemRollup.objects.get(machine=machine, resolution_s=3600).gpu_util_percent_mean is None


@pytest.mark.django_db
def test_a_machine_without_gpus_has_no_gpu_mean(machine):
    store_batch(machine, Batch.model_validate(make_batch([1, 2], ts=T0 + 20, gpus=0)))
    rollup.catch_up()
    assert SystemRollup.objects.filter(machine=machine).count() == 2  # the minute and the hour
    assert not SystemRollup.objects.exclude(gpu_util_percent_mean=None).exists()
