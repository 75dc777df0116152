"""The RoI pages and the machine page's panel: who may see them, what they show."""

from __future__ import annotations

import pytest

from . import seed

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def utc(settings):
    settings.TIME_ZONE = "UTC"


def test_a_stranger_is_sent_to_the_login_page(client):
    seed.priced_machine()
    for url in ("/economics/", "/economics/machines/gpu-01/"):
        r = client.get(url)
        assert r.status_code == 302 and r["Location"].startswith("/login/?next="), url


def test_the_roi_page_lists_machines_and_compares_assemblies(client, viewer):
    seed.priced_machine()
    seed.machine_with("gpu-09", 2)  # no price known
    seed.shared_machine()  # another assembly, with serving measured
    client.force_login(viewer)
    html = client.get("/economics/").content.decode()
    assert 'data-machine="gpu-01"' in html and "USD" in html
    assert "set a cost profile" in html  # gpu-09
    assert 'id="assembly-table"' in html and "2 × H100 80GB HBM3 · 256 GiB RAM" in html
    assert 'class="badge best"' in html
    assert 'name="idle_below_percent" value="10.0"' in html


def test_the_machine_roi_page_shows_figures_capacity_and_share(client, viewer):
    seed.priced_machine()
    client.force_login(viewer)
    html = client.get("/economics/machines/gpu-01/", {"context_tokens": "8192", "batch": "2"}).content.decode()
    assert 'id="roi-figures"' in html and "H100 pair" in html and "amortisation" in html
    assert 'id="capacity-table"' in html and "context 8192 tokens, batch 2" in html
    assert 'id="roi-cumulative"' in html and "/api/v1/machines/gpu-01/roi" in html
    assert 'id="share-verdict"' in html and "Not enough data yet" in html
    assert client.get("/economics/machines/nope/").status_code == 404


def test_bad_parameters_fall_back_to_the_defaults_and_say_so(client, viewer):
    seed.priced_machine()
    client.force_login(viewer)
    html = client.get("/economics/machines/gpu-01/", {"batch": "many", "since": "soon"}).content.decode()
    assert "batch: expected a number from 1 to 4096; using 1" in html
    assert "since: expected an ISO date" in html
    assert "context 4096 tokens, batch 1" in html


def test_the_machine_page_carries_the_roi_and_capacity_panel(client, viewer):
    seed.priced_machine()
    client.force_login(viewer)
    page = client.get("/machines/gpu-01/").content.decode()
    assert 'data-panel-url="/machines/gpu-01/panels/economics/"' in page and 'id="capacity-table"' not in page
    html = client.get("/machines/gpu-01/panels/economics/").content.decode()
    assert "<html" not in html
    assert 'id="capacity-table"' in html and 'id="roi-figures"' in html
    assert "js/roi.js" in html


def test_a_machine_without_a_price_links_to_the_admin(client, viewer):
    m = seed.machine_with("gpu-09", 1)
    client.force_login(viewer)
    html = client.get("/machines/gpu-09/panels/economics/").content.decode()
    assert f"/admin/economics/costprofile/add/?machine={m.pk}" in html
    assert "set value rates" in html


def test_the_capacity_table_says_where_each_measured_size_came_from(client, viewer):
    from datetime import timedelta

    m = seed.machine_with("gpu-20", 1)
    t0 = seed.hours_ago(2)
    stated = seed.job(m, "llama-70b-eval", "serve", t0, t0 + timedelta(seconds=100), [0])
    stated.model_params_b, stated.precision = 8, "int4"
    stated.save()
    guessed = seed.job(m, "qwen-8b-serve", "serve", t0, t0 + timedelta(seconds=100), [0])
    for i in range(10):
        seed.tokens(m, i + 1, t0 + timedelta(seconds=10 * (i + 1)), stated, generated=500)
        seed.tokens(m, i + 1, t0 + timedelta(seconds=10 * (i + 1)), guessed, generated=500)
    client.force_login(viewer)
    html = client.get("/economics/machines/gpu-20/").content.decode()
    row = html.split('data-size="7-8B"')[1].split("</tr>")[0]
    assert f"#{stated.pk} llama-70b-eval" in row and "8 B, int4 as the job states" in row
    assert f"#{guessed.pk} qwen-8b-serve" in row and "8 B, fp16 read from its name" in row
    assert "llama-70b-eval" not in html.split('data-size="70B"')[1].split("</tr>")[0]


def test_the_capacity_table_bounds_a_model_streamed_from_the_drive_the_agent_measured(client, viewer):
    """Fits if streamed: 405B at int4 needs 202.95 GB of weights; 2 × H100 (2 × 85.52 GB) × 0.9 usable
    leaves 153.9 GB − 2.11 GB of KV cache, so 51.2 GB stream from the drive for every token: at a
    measured 7 GB/s that is ≤ 0.14 tokens/s. Before the agent has measured the drive the column says ?."""
    m = seed.machine_with("gpu-01", 2)
    client.force_login(viewer)
    html = client.get("/economics/machines/gpu-01/").content.decode()
    assert 'id="streamed-head"' in html and "read speed not measured" in html
    assert "until then this column shows ?" in html

    m.storage_read_bytes_per_s = 7e9
    m.save()
    cap = client.get("/api/v1/machines/gpu-01/capacity").json()
    row = next(r for r in cap["sizes"] if r["params_b"] > 400)
    kv = 2 * 126 * 8 * 128 * 4096 * 2
    usable = cap["memory_bytes"] * cap["usable_memory_fraction"]
    expected = 7e9 / (405.9e9 * 0.5 - (usable - kv))
    assert row["serve"]["int4"]["streamed_tokens_per_s"] == pytest.approx(expected)
    assert cap["storage_read_bytes_per_s"] == 7e9
    small = next(r for r in cap["sizes"] if r["params_b"] < 2)
    assert small["fits_every_precision"] and small["streamed"] == []
    html = client.get("/economics/machines/gpu-01/").content.decode()
    assert "read 7.0 GB/s" in html and f"int4 ≤ {expected:,.2f} tok/s" in html
    assert "fits in memory" in html and "what this machine's agent measured" in html
