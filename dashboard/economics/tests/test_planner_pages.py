"""The planner page, its CSV, POST /api/v1/plan and the backfill switch: who may do what, what they show."""

from __future__ import annotations

import csv
import io

import pytest

from dashboard.jobs.models import AuditEvent, BackfillPolicy

from . import seed

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def utc(settings):
    settings.TIME_ZONE = "UTC"


def test_a_viewer_plans_the_example_workload(client, viewer):
    seed.priced_machine()
    client.force_login(viewer)
    r = client.get("/economics/plan/")
    assert r.status_code == 200
    html = r.content.decode()
    for section in (
        "plan-ranking-table",
        "plan-unified-table",
        "plan-streamed-table",
        "plan-gaps-table",
        "plan-methods",
    ):
        assert f'id="{section}"' in html, section
    assert 'data-key="fleet:gpu-01"' in html
    assert "OnnxStream" in html


def test_a_stranger_is_sent_to_the_login_page_and_the_api_refuses_them(client):
    r = client.get("/economics/plan/")
    assert r.status_code == 302 and r["Location"].startswith("/login/?next=")
    r = client.post(
        "/api/v1/plan", {"serve": [{"params_b": 8, "tokens_per_day": 1e6}]}, content_type="application/json"
    )
    assert r.status_code == 401 and "error" in r.json()


def test_the_form_plans_what_it_is_given_and_says_what_it_could_not_read(client, viewer):
    client.force_login(viewer)
    query = {"s0_params_b": "8", "s0_precision": "fp16", "s0_tokens_per_day": "1000000", "s0_peak_concurrent": "4",
             "t0_params_b": "8", "t0_method": "qlora", "t0_tokens_per_day": "5000000",
             "prices": "NVIDIA H200 (SXM, 141GB HBM3e) = 32000\nnonsense"}  # fmt: skip
    html = client.get("/economics/plan/", query).content.decode()
    assert "prices: &#x27;nonsense&#x27; is not &#x27;catalogue name = price&#x27;" in html
    assert 'data-key="catalogue:NVIDIA H200 (SXM, 141GB HBM3e):1"' in html  # priced by the form: one H200 is best
    assert "serve 8B fp16" in html and "train 8B qlora" in html
    html = client.get("/economics/plan/", {"s0_params_b": "-3"}).content.decode()
    assert "serve.0.params_b: Input should be greater than 0" in html
    assert 'id="plan-ranking-table"' not in html


def _csv(response) -> list[dict[str, str]]:
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_every_table_downloads_as_csv_with_units_in_the_headers(client, viewer):
    seed.priced_machine()
    client.force_login(viewer)
    heads = {
        "ranking": "cost_per_million_tokens_usd",
        "parts": "tokens_per_s_per_machine",
        "streamed": "streamed_tokens_per_s",
        "unified": "price_per_gb_usd",
        "efficiency": "efficiency_percent",
        "gaps": "idle_gpu_hours_per_week",
        "profile": "generated_tokens_per_week",
    }
    for table, header in heads.items():
        rows = _csv(client.get("/economics/plan/", {"format": "csv", "table": table}))
        assert rows and header in rows[0], table
    ranking = _csv(client.get("/economics/plan/", {"format": "csv", "table": "ranking"}))
    fleet = next(r for r in ranking if r["candidate"].startswith("gpu-01"))
    assert fleet["source"] == "fleet" and fleet["machines"] == "2"
    assert len(_csv(client.get("/economics/plan/", {"format": "csv", "table": "profile"}))) == 168
    assert client.get("/economics/plan/", {"format": "csv", "table": "nope"}).status_code == 400


def test_the_api_plans_a_workload_for_any_signed_in_user(client, viewer):
    seed.priced_machine()
    client.force_login(viewer)
    body = {"serve": [{"params_b": 70, "precision": "int4", "context_tokens": 8192, "tokens_per_day": 1e8,
                       "peak_concurrent": 16}], "serve_value_per_million": 1.5}  # fmt: skip
    r = client.post("/api/v1/plan", body, content_type="application/json")
    assert r.status_code == 200, r.content
    data = r.json()
    assert data["currency"] == "USD" and data["value_per_day"] == 150.0
    fleet = next(row for row in data["rows"] if row["key"] == "fleet:gpu-01")
    assert fleet["parts"][0]["basis"] == "estimated, default efficiency" and fleet["machines"] >= 1
    assert {"streamed", "unified", "gaps", "efficiencies"} <= set(data)
    r = client.post("/api/v1/plan", {"serve": []}, content_type="application/json")
    assert r.status_code == 400 and r.json() == {"error": "workload: describe at least one model to serve or to train"}


def test_a_serving_job_measured_here_marks_its_class_measured(client, viewer):
    from datetime import timedelta

    m = seed.priced_machine()
    t0 = seed.hours_ago(1)
    job = seed.job(m, "serve llama-70b int4", "serve", t0, t0 + timedelta(seconds=100), [0, 1])
    for i in range(10):
        seed.tokens(m, 900 + i, t0 + timedelta(seconds=10 * (i + 1)), job, generated=400)  # 40 tok/s
    client.force_login(viewer)
    body = {"serve": [{"params_b": 70, "precision": "int4", "tokens_per_day": 1e6}]}
    data = client.post("/api/v1/plan", body, content_type="application/json").json()
    fleet = next(row for row in data["rows"] if row["key"] == "fleet:gpu-01")
    assert fleet["parts"][0]["basis"] == "measured" and fleet["parts"][0]["tokens_per_s"] == 40.0
    assert f"#{job.pk}" in fleet["parts"][0]["detail"]
    eff = next(e for e in data["efficiencies"] if e["platform"] == "discrete")
    assert eff["basis"] == "measured"  # and it carries to the catalogue's discrete GPUs
    h200 = next(row for row in data["rows"] if row["key"].startswith("catalogue:NVIDIA H200"))
    assert h200["parts"][0]["basis"] == "estimated, measured efficiency"


def test_the_gaps_count_idle_gpu_hours_per_week_and_the_uplift_of_training_in_them(client, viewer):
    from datetime import timedelta

    from dashboard.economics import backfill

    # gpu-01 (2 GPUs): day 1 busy (80 %), day 2 idle (2 %) in the seed: 24 idle hours × 2 GPUs over 4 weeks
    # of which those hours were seen once: each idle hour of the week is idle in all its observations.
    m = seed.priced_machine()
    day2 = seed.today() - timedelta(days=2)
    train = seed.job(m, "train 8b lora", "train", day2, day2 + timedelta(hours=1), [0, 1])
    for i in range(10):
        seed.tokens(m, 500 + i, day2 + timedelta(seconds=10 * (i + 1)), train, train=1000)  # 100 tok/s, 50 per GPU
    g = backfill.gaps()
    (row,) = g["machines"]
    assert row["observed_hours_of_week"] == 48
    assert row["idle_gpu_hours_per_week"] == 24 * 2
    assert row["train_tokens_per_s_per_gpu"] == 50.0
    assert row["backfill_tokens_per_week"] == 48 * 3600 * 50 * 0.9
    assert row["roi_percent"] is not None and row["roi_uplift_points"] > 0


def test_only_operators_and_admins_turn_backfill_on_and_it_is_audited(client, viewer, operator, admin_user):
    client.force_login(viewer)
    html = client.get("/economics/plan/").content.decode()
    assert 'id="backfill-form"' not in html and "Operators and admins may turn it on" in html
    assert client.post("/economics/plan/backfill/", {"enabled": "1"}).status_code == 403
    assert not BackfillPolicy.current().enabled

    client.force_login(operator)
    assert 'id="backfill-form"' in client.get("/economics/plan/").content.decode()
    r = client.post("/economics/plan/backfill/", {"enabled": "1"}, follow=True)
    assert BackfillPolicy.current().enabled and BackfillPolicy.current().changed_by == operator
    assert "preemptible training jobs now fill the GPUs" in r.content.decode()
    event = AuditEvent.objects.get(action="backfill.on")
    assert event.actor == operator and event.detail == {"was_enabled": False}

    client.force_login(admin_user)
    client.post("/economics/plan/backfill/", {"enabled": "0"})
    assert not BackfillPolicy.current().enabled
    assert AuditEvent.objects.filter(action="backfill.off", actor=admin_user).count() == 1
    assert client.get("/economics/plan/backfill/").status_code == 405


def test_the_switch_on_the_planner_page_is_what_placement_acts_on(client, operator):
    """One action: the operator turns backfill on where the gaps are shown, and the next placement
    pass puts a preemptible training job on the free GPU of a machine dedicated to serving."""
    from conftest import make_batch
    from dashboard.fleet.ingest import store_batch
    from dashboard.fleet.models import Machine
    from dashboard.fleet.payload import Batch
    from dashboard.jobs.models import Job
    from dashboard.jobs.placement import place_queued

    m = Machine.objects.create(name="serve-01", policy="dedicated")
    store_batch(m, Batch.model_validate(make_batch([1], gpus=2)))
    argv = ["python", "-m", "hwprobe.workloads"]
    serving = Job.objects.create(owner=operator, name="chat", kind="serve", argv=argv, gpus=1, gpu_memory_gb=20)
    place_queued()
    Job.objects.filter(pk=serving.pk).update(status="running")
    train = Job.objects.create(
        owner=operator, name="lora", kind="train", argv=argv, gpus=1, gpu_memory_gb=20, preemptible=True
    )
    assert place_queued() == []  # off by default: serving machines serve only

    client.force_login(operator)
    client.post("/economics/plan/backfill/", {"enabled": "1"})
    assert [p.machine for p in place_queued()] == ["serve-01"]
    train.refresh_from_db()
    assert train.backfill and train.assigned_gpus != Job.objects.get(pk=serving.pk).assigned_gpus
    html = client.get("/economics/plan/").content.decode()
    assert "serving takes them back by preempting them" in html
