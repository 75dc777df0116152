"""The fleet page at fleet scale: totals, paging, the text and state filters, the orders, lean queries."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from dashboard.alerts.models import Alert, AlertRule
from dashboard.fleet.models import Accelerator, Machine, SystemRollup
from dashboard.web.overview import PAGE_SIZE

pytestmark = pytest.mark.django_db

GIB = 2**30


def a_machine(
    name: str,
    seen_s_ago: float | None = 5,
    utils: tuple = (50.0,),
    model: str = "NVIDIA H100 80GB HBM3",
    hostname: str = "",
) -> Machine:
    """A machine as ingest leaves it: inventory, ``latest`` with one entry per GPU, ``last_seen_at``."""
    now = timezone.now()
    seen = None if seen_s_ago is None else now - timedelta(seconds=seen_s_ago)
    latest = None
    if seen is not None:
        latest = {
            "seq": 1,
            "ts": seen.timestamp(),
            "system": {"cpu_percent": 20.0, "mem_used_bytes": 64 * GIB, "mem_total_bytes": 256 * GIB},
            "gpus": [
                {
                    "index": i,
                    "util_percent": u,
                    "mem_used_bytes": 40 * GIB,
                    "mem_total_bytes": 80 * GIB,
                    "processes": [],
                }
                for i, u in enumerate(utils)
            ],
        }
    m = Machine.objects.create(
        name=name,
        hostname=hostname or f"{name}.example",
        last_seen_at=seen,
        latest=latest,
        cpu_threads=128,
        mem_total_bytes=256 * GIB,
    )
    Accelerator.objects.bulk_create(
        [
            Accelerator(machine=m, index=i, vendor="nvidia", name=model, mem_total_bytes=80 * GIB)
            for i in range(len(utils))
        ]
    )
    return m


def cards(page: str) -> list[str]:
    return re.findall(r'<article class="card machine" data-machine="([^"]+)"', page)


def get(client, url: str) -> str:
    r = client.get(url)
    assert r.status_code == 200, url
    return r.content.decode()


def test_a_large_fleet_is_shown_one_page_at_a_time(client, viewer):
    for i in range(PAGE_SIZE + 5):
        a_machine(f"m-{i:03d}")
    client.force_login(viewer)
    first = get(client, "/?sort=name")
    assert cards(first) == [f"m-{i:03d}" for i in range(PAGE_SIZE)]
    assert f"1–{PAGE_SIZE} of {PAGE_SIZE + 5} machines" in first
    assert 'href="?sort=name&amp;page=2"' in first and 'rel="next"' in first
    second = get(client, "/?sort=name&page=2")
    assert cards(second) == [f"m-{i:03d}" for i in range(PAGE_SIZE, PAGE_SIZE + 5)]
    assert f"{PAGE_SIZE + 1}–{PAGE_SIZE + 5} of" in second and 'rel="prev"' in second
    assert cards(get(client, "/?sort=name&page=99")) == cards(second)  # past the end: the last page
    assert cards(get(client, "/?sort=name&page=x")) == cards(first)


def test_a_small_fleet_has_no_page_links(client, viewer):
    a_machine("gpu-01")
    client.force_login(viewer)
    page = get(client, "/")
    assert "1–1 of 1 machine<" in page
    assert 'class="pager"' not in page


def test_the_text_filter_matches_name_hostname_and_gpu_model(client, viewer):
    a_machine("train-01", model="NVIDIA H100 80GB HBM3")
    a_machine("train-02", model="NVIDIA A100-SXM4-80GB")
    a_machine("infer-01", model="NVIDIA L40S", hostname="rack7-node3.example")
    client.force_login(viewer)
    assert cards(get(client, "/?q=TRAIN")) == ["train-01", "train-02"]
    assert cards(get(client, "/?q=rack7")) == ["infer-01"]
    assert cards(get(client, "/?q=a100")) == ["train-02"]
    page = get(client, "/?q=nothing-like-this")
    assert cards(page) == [] and "No machine matches these filters" in page and "Show all 3 machines" in page
    assert 'value="a100"' in get(client, "/?q=a100")  # the toolbar shows what was asked


def test_the_state_filter_picks_online_offline_or_never_seen_machines(client, viewer):
    a_machine("up")
    a_machine("down", seen_s_ago=3600)
    a_machine("new", seen_s_ago=None)
    client.force_login(viewer)
    assert sorted(cards(get(client, "/"))) == ["down", "new", "up"]
    assert cards(get(client, "/?state=online")) == ["up"]
    assert cards(get(client, "/?state=offline")) == ["down"]
    assert cards(get(client, "/?state=never")) == ["new"]
    assert sorted(cards(get(client, "/?state=bogus"))) == ["down", "new", "up"]
    assert "1–1 of 1 machine matching" in get(client, "/?state=online")


def test_problems_come_first_by_default(client, viewer):
    a_machine("a-healthy")
    a_machine("b-lost-long-ago", seen_s_ago=86400)
    a_machine("c-just-lost", seen_s_ago=600)
    a_machine("d-never", seen_s_ago=None)
    alerting = a_machine("e-alerting")
    rule = AlertRule.objects.create(name="Hot", kind="gpu_temp", threshold=85)
    Alert.objects.create(rule=rule, key="e", machine=alerting, message="GPU 0 is hot")
    client.force_login(viewer)
    page = get(client, "/")
    assert cards(page) == ["c-just-lost", "b-lost-long-ago", "e-alerting", "d-never", "a-healthy"]
    assert "1 alert<" in page


def test_busiest_and_idlest_order_online_machines_by_mean_gpu_utilisation(client, viewer):
    a_machine("half", utils=(40.0, 60.0))
    a_machine("busy", utils=(95.0, 85.0))
    a_machine("idle", utils=(0.0, 2.0))
    a_machine("stale-busy", seen_s_ago=3600, utils=(100.0,))  # offline: its figure is old news
    a_machine("cpu-only", utils=())
    client.force_login(viewer)
    assert cards(get(client, "/?sort=busiest")) == ["busy", "half", "idle", "cpu-only", "stale-busy"]
    assert cards(get(client, "/?sort=idlest")) == ["idle", "half", "busy", "cpu-only", "stale-busy"]
    assert cards(get(client, "/?sort=name")) == ["busy", "cpu-only", "half", "idle", "stale-busy"]


def test_the_totals_cover_the_whole_fleet_whatever_the_filter(client, viewer):
    a_machine("a", utils=(20.0, 40.0))
    a_machine("b", utils=(90.0,), model="NVIDIA A100-SXM4-80GB")
    a_machine("c", seen_s_ago=3600, utils=(100.0,))
    a_machine("d", seen_s_ago=None, utils=())
    client.force_login(viewer)
    totals = get(client, "/?q=zzz")
    totals = totals[totals.index('id="fleet-totals"') : totals.index("</section>", totals.index('id="fleet-totals"'))]
    assert "<strong>4</strong>" in totals
    assert "2 online" in totals and "1 offline" in totals and "1 never seen" in totals
    assert "3 × H100 80GB HBM3, 1 × A100-SXM4-80GB" in totals
    assert "50 %" in totals  # (20 + 40 + 90) / 3 online GPUs; the offline machine's 100 % is left out
    assert "120 GiB / 240 GiB" in totals  # three online GPUs of 80 GiB, 40 GiB used each
    assert 'href="?q=zzz&amp;state=offline"' in totals  # the state links keep the text filter


def test_the_partial_refresh_keeps_filter_sort_and_page(client, viewer):
    for i in range(PAGE_SIZE + 3):
        a_machine(f"busy-{i:03d}", utils=(float(i),))
    a_machine("other")
    client.force_login(viewer)
    page = get(client, "/?q=busy&sort=idlest&page=2&partial=1")
    assert "<html" not in page
    assert cards(page) == [f"busy-{i:03d}" for i in range(PAGE_SIZE, PAGE_SIZE + 3)]
    assert 'href="?q=busy&amp;sort=idlest"' in page  # page links keep the filters
    assert f"{PAGE_SIZE + 1}–{PAGE_SIZE + 3} of {PAGE_SIZE + 3} machines matching" in page


def test_a_card_shows_preformatted_meters(client, viewer):
    a_machine("gpu-01", utils=(95.0, 10.0))
    client.force_login(viewer)
    page = get(client, "/")
    card = page[page.index('data-machine="gpu-01"') :]
    assert "2 × H100 80GB HBM3 · 128 CPU threads" in card
    assert '<div class="bar hot"><span data-width="95.0"></span></div>' in card
    assert "40.0 GiB / 80.0 GiB" in card and "64.0 GiB / 256 GiB" in card and "20 %" in card
    assert 'class="dot online"' in card and "last seen 5 s ago" in card


def test_the_page_reads_the_same_number_of_queries_for_ten_or_a_hundred_machines(client, viewer):
    client.force_login(viewer)
    get(client, "/?partial=1")  # the first request of a process fills its caches (default team, content types)
    counts = []
    for n in (10, 100):
        Machine.objects.all().delete()
        for i in range(n):
            a_machine(f"m-{i:03d}", utils=(10.0, 20.0))
        with CaptureQueriesContext(connection) as queries:
            get(client, "/?partial=1")
        counts.append(len(queries))
    assert counts[0] == counts[1]


def test_the_sparklines_read_the_gpu_mean_the_rollups_wrote(client, viewer):
    m = a_machine("gpu-01", utils=(10.0, 20.0))
    minute = timezone.now().replace(second=0, microsecond=0)
    SystemRollup.objects.bulk_create(
        [
            SystemRollup(
                machine=m, resolution_s=60, bucket=minute - timedelta(minutes=90), count=6, cpu_percent_mean=1.0
            ),
            SystemRollup(
                machine=m, resolution_s=60, bucket=minute - timedelta(minutes=2), count=6, cpu_percent_mean=12.34
            ),
            SystemRollup(
                machine=m,
                resolution_s=60,
                bucket=minute - timedelta(minutes=1),
                count=6,
                cpu_percent_mean=56.78,
                gpu_util_percent_mean=43.21,
            ),
            SystemRollup(
                machine=m, resolution_s=3600, bucket=minute - timedelta(minutes=1), count=6, cpu_percent_mean=99.0
            ),
        ]
    )
    client.force_login(viewer)
    page = get(client, "/?partial=1")
    line = json.loads(html.unescape(re.search(r'data-sparkline="([^"]*)"', page).group(1)))
    # The last hour's minutes in order, rounded to tenths; a minute without a GPU mean is a gap.
    assert line == {"cpu": [12.3, 56.8], "gpu": [None, 43.2]}


def test_a_card_links_its_machine_as_reverse_does(client, viewer):
    names = ["gpu-01", "rack 2 · GPU/a", "ünï&<x>"]
    for name in names:
        a_machine(name.replace("/", "-"))
    client.force_login(viewer)
    page = get(client, "/")
    for name in names:
        name = name.replace("/", "-")
        url = reverse("fleet:machine", kwargs={"name": name})
        assert f'<h2><a href="{html.escape(url)}">{html.escape(name, quote=False)}</a></h2>' in page
