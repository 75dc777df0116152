"""tokens/s series and summaries, worked by hand from seeded windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conftest import make_batch
from dashboard.fleet import rollup, throughput
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.payload import Batch
from dashboard.fleet.tests.test_ingest import post
from dashboard.jobs import throughput as job_throughput
from dashboard.jobs.models import Job, JobAttempt

UTC = UTC
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


@pytest.fixture
def training(machine, operator):
    """A training job on GPU 0 whose windows (10 s each) carry 1000, 2000 and 3000 tokens."""
    job = Job.objects.create(
        owner=operator,
        name="tiny-7b",
        kind="train",
        argv=["x"],
        gpus=1,
        machine=machine,
        assigned_gpus=[0],
        status="running",
        started_at=T0,
        attempt=1,
    )
    JobAttempt.objects.create(job=job, number=1, machine=machine, gpus=[0])
    batch = make_batch([1, 2, 3], ts=(T0 + timedelta(seconds=30)).timestamp(), gpus=1)
    for sample, tokens in zip(batch["samples"], (1000, 2000, 3000), strict=True):
        sample["tokens"] = [{"job_id": job.pk, "source": "progress", "train": tokens}]
    batch["samples"][2]["tokens"].append({"job_id": None, "source": "report", "generated": 50})
    store_batch(machine, Batch.model_validate(batch))
    return job


@pytest.mark.django_db
def test_a_jobs_summary_gives_mean_median_peak_and_tokens_per_joule(training):
    s = job_throughput.job_summary(training)["train"]
    # 6000 tokens over 30 s of windows; per-window rates 100, 200, 300 tokens/s.
    assert s["total_tokens"] == 6000
    assert s["mean_tokens_per_s"] == 200.0 and s["median_tokens_per_s"] == 200.0 and s["peak_tokens_per_s"] == 300.0
    # GPU 0 drew 350 W (mean) in each 10 s window: 3 x 3500 J = 10,500 J -> 6000 / 10500 tokens/J.
    assert s["tokens_per_joule"] == pytest.approx(6000 / 10500, rel=1e-6)


@pytest.mark.django_db
def test_the_machine_series_stacks_tokens_per_second_by_job(training, machine):
    names = job_throughput.names_on(machine)
    data = throughput.machine_series(machine, "tokens.train", T0, T0 + timedelta(hours=1), names)
    assert data["unit"] == "tokens/s" and data["step_s"] == 10
    [series] = data["series"]
    assert series["job"] == training.pk and series["name"] == f"#{training.pk} tiny-7b"
    assert series["mean"] == [100.0, 200.0, 300.0]
    generated = throughput.machine_series(machine, "tokens.generated", T0, T0 + timedelta(hours=1), names)
    assert generated["series"][0]["name"] == "outside jobs" and generated["series"][0]["mean"] == [5.0]


@pytest.mark.django_db
def test_the_series_api_serves_tokens_for_machines_jobs_and_the_fleet(client, viewer, training, machine):
    client.force_login(viewer)
    since = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=1)).isoformat()}
    r = client.get(f"/api/v1/machines/{machine.name}/series", {"metric": "tokens.train", **since})
    assert r.status_code == 200 and r.json()["series"][0]["mean"] == [100.0, 200.0, 300.0]
    r = client.get(f"/api/v1/jobs/{training.pk}/series", {"metric": "tokens.train"})
    assert sum(r.json()["series"][0]["mean"]) * r.json()["step_s"] == pytest.approx(6000, rel=1e-3)
    rollup.catch_up()  # the job has been running for days: its GPU chart reads rollups
    r = client.get(f"/api/v1/jobs/{training.pk}/series", {"metric": "gpu.util_percent"})
    assert [s["device"] for s in r.json()["series"]] == [0]
    r = client.get("/api/v1/fleet/series", {"metric": "tokens.train", **since})
    assert r.json()["series"][0]["machine"] == machine.name
    detail = client.get(f"/api/v1/jobs/{training.pk}").json()
    assert detail["throughput"]["train"]["total_tokens"] == 6000
    listing = client.get("/api/v1/jobs").json()["jobs"][0]
    assert listing["throughput"]["train"]["peak_tokens_per_s"] == 300.0
    summary = client.get(f"/api/v1/machines/{machine.name}/throughput", since).json()["throughput"]
    assert summary["generated"]["total_tokens"] == 50


@pytest.mark.django_db
def test_a_job_counts_only_tokens_from_machines_it_ran_on(client, machine, agent_token, operator):
    """An agent's token writes its own machine's rows; a job id it names that never ran there
    gets none of them."""

    ours = Job.objects.create(owner=operator, name="a", kind="train", argv=["x"], gpus=0)
    JobAttempt.objects.create(job=ours, number=1, machine=machine)
    theirs = Job.objects.create(owner=operator, name="b", kind="serve", argv=["x"], gpus=0)
    batch = make_batch([1])
    batch["samples"][0]["tokens"] = [
        {"job_id": ours.pk, "source": "progress", "train": 5120},
        {"job_id": theirs.pk, "source": "prometheus", "prompt": 10, "generated": 300},
        {"job_id": None, "source": "report", "generated": 7},
    ]
    assert post(client, agent_token, batch).status_code == 200
    post(client, agent_token, batch)  # replayed
    assert [r.train_tokens for r in job_throughput.rows_of([ours.pk])] == [5120]
    assert not job_throughput.rows_of([theirs.pk]).exists()
    assert job_throughput.job_summary(theirs)["generated"]["total_tokens"] == 0


# ---- rates over active time, and the job's chart at the resolution it was measured -------------


@pytest.fixture
def short_train(machine, operator):
    """The issue's case: a job producing 73,000 tokens/s for 25 s, spread over three 10 s windows
    that it fills for 3, 10 and 12 s (the last window's active time includes the line that
    arrived after a 2 s step), with 1 s points in each."""
    job = Job.objects.create(
        owner=operator, name="short", kind="train", argv=["x"], gpus=0, machine=machine, status="succeeded", attempt=1
    )
    JobAttempt.objects.create(job=job, number=1, machine=machine, gpus=[])
    end = T0 + timedelta(seconds=30)
    batch = make_batch([11, 12, 13], ts=end.timestamp(), gpus=0)
    for sample, active in zip(batch["samples"], (3, 10, 12), strict=True):
        start = sample["ts"] - 10
        points = [[start + 10 - active + i + 1, 1.0, 0, 0, 73_000] for i in range(active)]
        sample["tokens"] = [
            {
                "job_id": job.pk,
                "source": "progress",
                "train": 73_000 * active,
                "active_s": float(active),
                "points": points,
            }
        ]
    store_batch(machine, Batch.model_validate(batch))
    return job


@pytest.mark.django_db
def test_mean_and_median_count_only_the_seconds_the_job_was_producing(short_train):
    s = job_throughput.job_summary(short_train)["train"]
    assert s["total_tokens"] == 73_000 * 25
    assert s["active_s"] == 25.0
    # Over whole windows this was 1,825,000 / 30 s = 60.8 k/s, 17 % low.
    assert s["mean_tokens_per_s"] == 73_000.0 and s["median_tokens_per_s"] == 73_000.0


@pytest.mark.django_db
def test_rows_of_an_older_agent_without_active_time_count_their_whole_window(training):
    s = job_throughput.job_summary(training)["train"]
    assert s["active_s"] == 30.0 and s["mean_tokens_per_s"] == 200.0


@pytest.mark.django_db
def test_the_job_chart_draws_the_measured_seconds(short_train):
    data = job_throughput.job_series(short_train, "tokens.train", T0, T0 + timedelta(seconds=40))
    [series] = data["series"]
    assert len(series["t"]) == 25 and set(series["mean"]) == {73_000.0}
    assert data["resolution_s"] == 1.0 and data["step_s"] == 2


@pytest.mark.django_db
def test_a_long_span_falls_back_to_windows(short_train):
    data = job_throughput.job_series(short_train, "tokens.train", T0 - timedelta(days=1), T0 + timedelta(hours=1))
    assert data["step_s"] > 10 and len(data["series"][0]["t"]) == 1


@pytest.mark.django_db
def test_reports_the_agent_could_not_use_add_up_on_the_machine_once(machine):
    batch = make_batch([21, 22], gpus=0)
    batch["samples"][0]["tokens_dropped"] = 3
    batch["samples"][1]["tokens_dropped"] = 4
    batch["samples"][1]["report_udp"] = False
    store_batch(machine, Batch.model_validate(batch))
    store_batch(machine, Batch.model_validate(batch))  # a replay adds nothing
    machine.refresh_from_db()
    assert machine.tokens_dropped == 7
    assert machine.latest["report_udp"] is False


# ---- two sources counting one job's tokens: every chart takes the one that counted most ---------


@pytest.fixture
def served_twice(machine, operator):
    """A serving job whose three windows are counted twice: by its output (1000 tokens a window)
    and by its engine's metrics (1200: the engine also counts what the output did not print)."""
    job = Job.objects.create(
        owner=operator, name="serve-8b", kind="serve", argv=["x"], gpus=0, machine=machine, status="running", attempt=1
    )
    JobAttempt.objects.create(job=job, number=1, machine=machine, gpus=[])
    batch = make_batch([1, 2, 3], ts=(T0 + timedelta(seconds=30)).timestamp(), gpus=0)
    for sample in batch["samples"]:
        sample["tokens"] = [
            {"job_id": job.pk, "source": "progress", "generated": 1000},
            {"job_id": job.pk, "source": "prometheus", "generated": 1200},
        ]
    store_batch(machine, Batch.model_validate(batch))
    return job


@pytest.mark.django_db
def test_a_window_counted_by_two_sources_counts_once_in_every_chart(served_twice, machine):
    assert job_throughput.job_summary(served_twice)["generated"]["total_tokens"] == 3600
    hour = (T0, T0 + timedelta(hours=1))
    names = job_throughput.names_on(machine)
    on_machine = throughput.machine_series(machine, "tokens.generated", *hour, names)
    assert on_machine["step_s"] == 10 and on_machine["series"][0]["mean"] == [120.0, 120.0, 120.0]
    fleet = throughput.fleet_series("tokens.generated", *hour)  # minute rollups: 3 x 1,200 in one minute
    assert fleet["step_s"] == 60 and fleet["series"][0]["mean"] == [60.0]
    job = job_throughput.job_series(served_twice, "tokens.generated", *hour)
    assert sum(job["series"][0]["mean"]) == 360.0  # a window a point: tokens over their window's 10 s
    day = job_throughput.job_series(served_twice, "tokens.generated", T0, T0 + timedelta(days=1))
    assert sum(day["series"][0]["mean"]) * day["step_s"] == pytest.approx(3600)


@pytest.fixture
def shared_windows(machine, operator):
    """Two serving jobs on one machine over four 10 s windows (generated tokens):

    w1: job a 100 by its output in 5 s and 80 by its engine (no time given); job b 50 in 10 s
    w2: job a 200 by its output in 4 s and 200 by its engine (a tie: the longer time, the window's)
    w3: job a 300 by its engine
    w4: job b 40 in 4 s
    """
    a, b = (
        Job.objects.create(owner=operator, name=n, kind="serve", argv=["x"], gpus=0, machine=machine, status="running")
        for n in ("a", "b")
    )
    for job in (a, b):
        JobAttempt.objects.create(job=job, number=1, machine=machine, gpus=[])
    batch = make_batch([1, 2, 3, 4], ts=(T0 + timedelta(seconds=40)).timestamp(), gpus=0)
    windows = [
        [(a, "progress", 100, 5), (a, "prometheus", 80, None), (b, "report", 50, 10)],
        [(a, "progress", 200, 4), (a, "prometheus", 200, None)],
        [(a, "prometheus", 300, None)],
        [(b, "report", 40, 4)],
    ]
    for sample, counts in zip(batch["samples"], windows, strict=True):
        sample["tokens"] = [
            {"job_id": job.pk, "source": source, "generated": n} | ({"active_s": s} if s else {})
            for job, source, n, s in counts
        ]
    store_batch(machine, Batch.model_validate(batch))
    return a, b


@pytest.mark.django_db
def test_summaries_take_the_best_source_and_its_seconds_and_add_jobs_sharing_a_window(machine, shared_windows):
    a, b = shared_windows
    jobs = job_throughput.job_summaries([a.pk, b.pk])
    # a: 100/5 s, 200/10 s (the tie takes the window's 10 s over 4 s), 300/10 s
    assert jobs[a.pk]["generated"] == {
        "total_tokens": 600,
        "mean_tokens_per_s": 24.0,  # 600 / 25 s
        "median_tokens_per_s": 20.0,  # rates 20, 20, 30
        "peak_tokens_per_s": 30.0,
        "active_s": 25.0,
        "tokens_per_joule": None,
    }
    # b: 50/10 s and 40/4 s: an even count's median is the mean of the middle two
    assert jobs[b.pk]["generated"] | {"tokens_per_joule": None} == {
        "total_tokens": 90,
        "mean_tokens_per_s": 6.429,  # 90 / 14 s
        "median_tokens_per_s": 7.5,  # rates 5 and 10
        "peak_tokens_per_s": 10.0,
        "active_s": 14.0,
        "tokens_per_joule": None,
    }
    assert jobs[a.pk]["train"] == throughput.empty_summary()["train"]
    # The machine: w1 adds both jobs' 150 tokens over the longer of their times (10 s), so rates
    # 15, 20, 30 and 10 over 10 + 10 + 10 + 4 s.
    whole = throughput.machine_summary(machine, T0, T0 + timedelta(minutes=1))["generated"]
    assert whole == {
        "total_tokens": 690,
        "mean_tokens_per_s": 20.294,  # 690 / 34 s
        "median_tokens_per_s": 17.5,
        "peak_tokens_per_s": 30.0,
        "active_s": 34.0,
        "tokens_per_joule": None,
    }


@pytest.mark.django_db
def test_the_lists_summaries_are_cached_briefly_and_a_job_without_tokens_too(
    machine, shared_windows, operator, django_assert_num_queries
):
    a, b = shared_windows
    quiet = Job.objects.create(owner=operator, name="quiet", kind="train", argv=["x"], gpus=0)
    first = job_throughput.job_summaries([a.pk, b.pk, quiet.pk])
    assert set(first) == {a.pk, b.pk}
    with django_assert_num_queries(0):  # the list's next refresh, 5 s later
        assert job_throughput.job_summaries([a.pk, b.pk, quiet.pk]) == first
    # A job's own page is not cached.
    assert job_throughput.job_summary(a)["generated"]["total_tokens"] == 600
