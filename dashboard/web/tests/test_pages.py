"""The HTML pages: who may see them, the empty state, a machine with and without data; the machine
page's shell answers without its panels' queries, and each panel (throughput, jobs, RoI and
capacity) comes from its own URL with the page's access checks."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conftest import make_batch
from dashboard.economics.tests import seed
from dashboard.fleet import state
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import parse_batch
from dashboard.teams import service as teams

pytestmark = pytest.mark.django_db


def send(machine: Machine, batch: dict) -> None:
    store_batch(machine, parse_batch(json.dumps(batch).encode()))


def test_a_stranger_is_sent_to_the_login_page(client, machine):
    for url in ("/", "/?partial=1", f"/machines/{machine.name}/", f"/machines/{machine.name}/?partial=1"):
        r = client.get(url)
        assert r.status_code == 302, url
        assert r["Location"].startswith("/login/?next=")


def test_a_viewer_sees_the_fleet_and_a_machine(client, viewer, machine):
    send(machine, make_batch([1, 2]))
    client.force_login(viewer)
    assert machine.name in client.get("/").content.decode()
    assert client.get(f"/machines/{machine.name}/").status_code == 200


def test_an_operator_sees_the_fleet_too(client, operator, machine):
    client.force_login(operator)
    assert client.get("/").status_code == 200


def test_the_login_form_logs_a_user_in(client, viewer):
    r = client.post("/login/", {"username": "victor", "password": "victor-pass"}, follow=True)
    assert r.redirect_chain[-1][0] == "/"
    assert "victor" in r.content.decode()


def test_an_empty_fleet_says_how_to_enroll_a_machine_with_this_servers_url(client, viewer, settings):
    settings.ALLOWED_HOSTS = ["dash.example.com"]
    client.force_login(viewer)
    page = client.get("/", HTTP_HOST="dash.example.com").content.decode()
    assert "No machines yet" in page
    assert "python manage.py enroll NAME" in page
    assert "pip install -r hwprobe/requirements.txt" in page
    assert "python -m hwprobe run --server http://dash.example.com --token TOKEN" in page


def test_the_fleet_card_shows_accelerators_and_latest_values(client, viewer, machine):
    send(machine, make_batch([1, 2, 3], cpu=42.0, util=63.0))
    client.force_login(viewer)
    page = client.get("/").content.decode()
    assert "2 × H100 80GB HBM3" in page
    assert "42 %" in page and "63 %" in page
    assert "59.6 GiB / 256 GiB" in page  # RAM used / total (64e9 bytes of 256 GiB)
    assert "37.3 GiB / 79.6 GiB" in page  # one GPU's memory
    assert 'class="dot online"' in page
    assert "last seen 0 s ago" in page


def test_the_partial_is_the_machine_list_without_the_page_around_it(client, viewer, machine):
    client.force_login(viewer)
    r = client.get("/?partial=1")
    assert "<html" not in r.content.decode()
    assert machine.name in r.content.decode()


def test_a_machine_page_shows_inventory_charts_and_processes(client, viewer, machine):
    send(machine, make_batch([1, 2]))
    client.force_login(viewer)
    page = client.get(f"/machines/{machine.name}/").content.decode()
    assert "AMD EPYC 7763 64-Core Processor" in page
    assert "NVIDIA H100 80GB HBM3" in page and "700 W" in page
    for metric in (
        "system.cpu_percent",
        "system.mem_used_bytes",
        "gpu.util_percent",
        "gpu.mem_used_bytes",
        "gpu.power_watts",
        "gpu.temp_c",
    ):
        assert f'data-metric="{metric}"' in page
    assert "/api/v1/machines/gpu-01/series" in page
    assert "<td>alice</td>" in page and "4242" in page
    assert "plotly-" in page


def test_a_machine_without_gpus_has_no_gpu_charts(client, viewer, machine):
    send(machine, make_batch([1], gpus=0))
    client.force_login(viewer)
    page = client.get(f"/machines/{machine.name}/").content.decode()
    assert 'data-metric="system.cpu_percent"' in page
    assert "gpu.util_percent" not in page
    assert "GPU processes" not in page


def test_a_machine_with_no_data_says_how_to_start_its_agent(client, viewer, machine):
    client.force_login(viewer)
    page = client.get(f"/machines/{machine.name}/").content.decode()
    assert "No data yet" in page
    assert "python -m hwprobe run --server http://testserver --token TOKEN" in page
    assert "data-metric" not in page


def test_the_machine_partial_carries_state_and_processes(client, viewer, machine):
    send(machine, make_batch([1]))
    client.force_login(viewer)
    page = client.get(f"/machines/{machine.name}/?partial=1").content.decode()
    assert 'id="machine-state"' in page and 'id="machine-processes"' in page
    assert "<html" not in page


def test_spool_drops_are_shown(client, viewer, machine):
    batch = make_batch([1])
    batch["dropped"] = 7
    send(machine, batch)
    client.force_login(viewer)
    assert "7 samples dropped" in client.get(f"/machines/{machine.name}/").content.decode()


def test_samples_the_server_refused_are_shown_with_its_reason(client, viewer, machine):
    batch = make_batch([1])
    batch["refused"] = 3
    send(machine, batch)
    state.record_refusal(machine.pk, timezone.now(), "400: samples[0].ts: not a number")
    client.force_login(viewer)
    page = client.get(f"/machines/{machine.name}/").content.decode()
    assert "3 samples refused" in page and "400: samples[0].ts: not a number" in page
    assert "hwprobe dead-letters" in page, "the page says where the samples are"


def test_a_recent_refusal_without_lost_samples_is_noted(client, viewer, machine):
    send(machine, make_batch([1]))
    client.force_login(viewer)
    state.record_refusal(machine.pk, timezone.now() - timedelta(days=2), "400: inventory.hostname: too long")
    assert "was refused" not in client.get(f"/machines/{machine.name}/").content.decode(), "old news"
    state.record_refusal(machine.pk, timezone.now(), "400: inventory.hostname: too long")
    page = client.get(f"/machines/{machine.name}/").content.decode()
    assert "a batch was refused" in page and "inventory.hostname: too long" in page


def test_an_unknown_machine_is_a_404(client, viewer):
    client.force_login(viewer)
    assert client.get("/machines/nope/").status_code == 404


def test_a_logged_in_user_can_log_out_with_a_post(client, viewer):
    client.force_login(viewer)
    page = client.get("/").content.decode()
    assert 'action="/logout/"' in page and 'method="post"' in page
    client.post("/logout/")
    assert client.get("/").status_code == 302


def test_staff_see_the_admin_link_and_others_do_not(client, viewer, admin_user):
    client.force_login(viewer)
    assert 'href="/admin/"' not in client.get("/").content.decode()
    client.force_login(admin_user)
    assert 'href="/admin/"' in client.get("/").content.decode()


# ---- the machine page: a fast shell, its heavy panels each from their own URL ----

PANELS = ("throughput", "jobs", "economics")
# Each panel's own mark in its fragment: what the shell must not carry.
MARKS = {"throughput": 'id="machine-throughput"', "jobs": 'id="machine-jobs"', "economics": 'id="capacity-table"'}
# Tables only the panels read: jobs and their attempts, token rows, the RoI's costs and rates.
PANEL_TABLES = ("jobs_job", "jobs_jobattempt", "fleet_throughputsample", "economics_")


@pytest.fixture
def busy(settings):
    """gpu-01 with telemetry, two jobs, token rows, a price and value rates (seed.priced_machine)."""
    settings.TIME_ZONE = "UTC"
    m = seed.priced_machine()
    send(m, make_batch([1, 2]))
    return m


def test_the_shell_shows_the_machine_and_a_loading_place_for_each_panel(client, viewer, busy):
    client.force_login(viewer)
    page = client.get("/machines/gpu-01/").content.decode()
    assert "AMD EPYC 7763 64-Core Processor" in page and 'data-metric="system.cpu_percent"' in page
    assert 'id="machine-state"' in page and 'id="machine-processes"' in page
    for panel in PANELS:
        assert f'data-panel-url="/machines/gpu-01/panels/{panel}/"' in page, panel
        assert MARKS[panel] not in page, panel
    assert "Loading throughput…" in page and "Loading jobs…" in page


def test_the_shell_runs_none_of_the_panels_queries(client, viewer, busy):
    client.force_login(viewer)
    client.get("/machines/gpu-01/")  # warm: sessions, content types, caches
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/machines/gpu-01/?range=7d").status_code == 200
    sql = [q["sql"] for q in queries.captured_queries]
    assert len(sql) <= 14, sql  # 11 when written: session, user, alerts, the machine, its devices, GPM
    for table in PANEL_TABLES:
        assert not [s for s in sql if table in s], table


def test_the_shell_reads_the_machine_and_its_devices_once(client, viewer, busy):
    client.force_login(viewer)
    client.get("/machines/gpu-01/")
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/machines/gpu-01/").status_code == 200
    sql = [q["sql"] for q in queries.captured_queries]
    # Rows read from each table (a subquery of another table's query is not a read of its rows).
    assert len([s for s in sql if s.startswith('SELECT "fleet_machine".')]) == 1, sql
    assert len([s for s in sql if s.startswith('SELECT "fleet_accelerator".')]) == 1, sql


def test_each_panel_url_renders_its_panel_alone(client, viewer, busy):
    client.force_login(viewer)
    for panel in PANELS:
        r = client.get(f"/machines/gpu-01/panels/{panel}/")
        assert r.status_code == 200, panel
        html = r.content.decode()
        assert "<html" not in html and MARKS[panel] in html, panel
    assert "serve llama-3.1-8b" in client.get("/machines/gpu-01/panels/jobs/").content.decode()
    assert 'id="roi-figures"' in client.get("/machines/gpu-01/panels/economics/").content.decode()


def test_the_throughput_panel_follows_the_range_in_its_query_string(client, viewer, busy):
    client.force_login(viewer)
    # The seeded tokens are days old: none in the last hour, some in 7 days.
    assert (
        "No tokens counted on gpu-01 in this range"
        in client.get("/machines/gpu-01/panels/throughput/").content.decode()
    )
    week = client.get("/machines/gpu-01/panels/throughput/?range=7d").content.decode()
    assert 'class="throughput-empty" hidden' in week


def test_the_panels_need_a_login(client, busy):
    for panel in PANELS:
        r = client.get(f"/machines/gpu-01/panels/{panel}/")
        assert r.status_code == 302 and r["Location"].startswith("/login/?next="), panel


def test_a_user_outside_the_machines_team_gets_404_on_the_panels_as_on_the_page(client, django_user_model, busy):
    busy.team = teams.create_team(None, "research", "Research")
    busy.save(update_fields=["team"])
    outsider = django_user_model.objects.create_user("olive", password="x")
    teams.set_role(None, teams.create_team(None, "other", "Other"), outsider, "operator")
    client.force_login(outsider)
    assert client.get("/machines/gpu-01/").status_code == 404
    for panel in PANELS:
        assert client.get(f"/machines/gpu-01/panels/{panel}/").status_code == 404, panel
    assert client.get("/machines/nope/panels/jobs/").status_code == 404
