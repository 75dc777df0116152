"""The HTML pages: who may see them, the empty state, a machine with and without data."""

from __future__ import annotations

import json

import pytest

from conftest import make_batch
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine
from dashboard.fleet.payload import parse_batch

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
