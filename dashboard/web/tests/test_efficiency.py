"""GPM beside NVML on the machine and job pages, why it is absent, and the fleet's "busy but
inefficient" ranking, from windows the agent's collector made out of the H200 GPM recordings
(hwprobe/tests/fixtures/gpm/, recorded on a real H200: the 64×64 matmul loop NVML calls 30 % busy at
0.5 % SM activity, the bf16 8192² matmul at 96.0 % SM) and an L40S without GPM."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.core.cache import cache
from django.utils import timezone

from conftest import make_batch
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Accelerator, Machine
from dashboard.fleet.payload import Batch
from dashboard.fleet.rollup import catch_up
from dashboard.jobs.models import Job
from dashboard.teams.models import Team
from dashboard.web import efficiency
from dashboard.web.efficiency import busy_but_inefficient, gpm_absent_reason
from hwprobe.collectors.nvidia import NvidiaCollector
from hwprobe.testing import batches, nvml_replay

pytestmark = pytest.mark.django_db
GPM = Path(__file__).resolve().parents[3] / "hwprobe" / "tests" / "fixtures" / "gpm"


def replayed(name: str, recording: str, end: datetime, minutes: int = 20) -> Machine:
    """A machine whose agent sent ``minutes`` of 10 s windows of a recorded load, ending at ``end``."""
    machine = Machine.objects.create(name=name)
    nv = NvidiaCollector(
        nvml=nvml_replay.from_recording(json.loads((GPM / recording).read_text())), pid_info=lambda pid: (None, None)
    )
    nv.collect()  # the first GPM sample has no pair yet
    seqs = list(range(1, 6 * minutes + 1))
    store_batch(machine, Batch.model_validate(batches.batch(nv, seqs, end.timestamp())), now=end)
    return machine


@pytest.fixture
def now() -> datetime:
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def fleet(now):
    machines = {
        "tiny": replayed("h200-tiny", "h200_tiny_matmul.json", now - timedelta(minutes=1)),
        "matmul": replayed("h200-matmul", "h200_matmul_bf16.json", now - timedelta(minutes=1)),
        "l40s": replayed("l40s-01", "l40s_no_gpm.json", now - timedelta(minutes=1)),
    }
    catch_up(now)
    return machines


def test_a_gpu_nvml_calls_busy_at_little_sm_activity_is_ranked_with_a_link_to_its_machine(client, operator, fleet):
    client.force_login(operator)
    page = client.get("/").content.decode()
    card = page.split('id="busy-but-inefficient"')[1].split("</section>")[0]
    assert '<a href="/machines/h200-tiny/">h200-tiny</a>' in card
    assert "h200-matmul" not in card  # 96.0 % SM activity: busy and working
    assert "l40s-01" not in card  # no GPM: nothing says it is inefficient


def test_the_ranking_reads_the_last_hour_of_minute_rollups(fleet, now):
    [row] = busy_but_inefficient(Machine.objects.all(), now)
    assert row["machine"] == "h200-tiny" and row["gpu_index"] == 0
    assert row["nvml_percent"] == pytest.approx(30, abs=1)
    assert row["sm_percent"] < 1
    assert busy_but_inefficient(Machine.objects.all(), now + timedelta(hours=2)) == []


def test_a_machine_of_another_team_is_not_ranked_for_a_stranger(client, django_user_model, fleet):
    fleet["tiny"].team = Team.objects.create(slug="research", name="Research")
    fleet["tiny"].save()
    stranger = django_user_model.objects.create_user("sam", password="sam-pass")
    client.force_login(stranger)
    page = client.get("/").content.decode()
    assert "h200-tiny" not in page.split('id="busy-but-inefficient"')[1].split("</section>")[0]


@pytest.fixture
def ranking_cache():
    cache.delete(efficiency.RANKING_CACHE_KEY)
    yield
    cache.delete(efficiency.RANKING_CACHE_KEY)


def test_the_fleet_page_reads_the_beats_cached_ranking_scoped_to_the_users_teams(ranking_cache, fleet, now):
    research = Team.objects.create(slug="research", name="Research")
    fleet["tiny"].team = research
    fleet["tiny"].save()
    assert efficiency.refresh_ranking(now) == 1
    Machine.objects.filter(pk=fleet["tiny"].pk).update(name="renamed")  # the cached row still says h200-tiny
    [row] = efficiency.fleet_ranking(None, now)
    assert row["machine"] == "h200-tiny" and row["url"] == "/machines/h200-tiny/"
    assert row == busy_but_inefficient(Machine.objects.filter(name="renamed"), now)[0] | {
        "machine": "h200-tiny",
        "url": "/machines/h200-tiny/",
    }
    assert [r["machine"] for r in efficiency.fleet_ranking({research.pk}, now)] == ["h200-tiny"]
    assert efficiency.fleet_ranking(set(), now) == []  # the shared pool only
    # Past RANKING_STALE_S the page ranks inline again (the beat has stopped).
    later = now + timedelta(seconds=efficiency.RANKING_STALE_S + 1)
    assert [r["machine"] for r in efficiency.fleet_ranking(None, later)] == ["renamed"]


def test_the_machine_page_charts_gpm_beside_nvml_through_its_own_script(client, operator, fleet):
    client.force_login(operator)
    page = client.get("/machines/h200-tiny/").content.decode()
    assert 'id="gpm-chart-0" data-gpm-gpu="0"' in page
    config = json.loads(re.search(r'<script id="gpm-config" type="application/json">(.*?)</script>', page).group(1))
    assert [m for m, _ in config["metrics"]][:2] == ["gpu.util_percent", "gpu.sm_util_percent"]
    assert config["since"] is None  # it follows the page's range
    assert re.search(r'<script src="/static/js/efficiency\.js[^"]*" defer>', page)
    # The series it reads: SM activity in %, the recording's 0.5 %.
    answer = client.get("/api/v1/machines/h200-tiny/series", {"metric": "gpu.sm_util_percent", "since": "1h"}).json()
    assert answer["unit"] == "%" and max(v for v in answer["series"][0]["mean"] if v is not None) < 1


def test_a_gpu_without_gpm_says_why_instead_of_a_chart(client, operator, fleet):
    client.force_login(operator)
    page = client.get("/machines/l40s-01/").content.decode()
    assert "gpm-chart-" not in page
    assert "has no GPM: NVML&#x27;s GPU Performance Monitoring needs Hopper or later" in page


def test_gpus_alike_without_gpm_share_one_note(client, operator):
    machine = Machine.objects.create(name="h100-box")
    store_batch(machine, Batch.model_validate(make_batch([1], gpus=5)))
    # An agent that could not tell whether the four H100s have GPM, and an L40S, which has none.
    machine.accelerators.filter(index__lt=4).update(name="NVIDIA H100 80GB HBM3", gpm_supported=None)
    machine.accelerators.filter(index=4).update(name="NVIDIA L40S", gpm_supported=False)
    client.force_login(operator)
    page = client.get("/machines/h100-box/").content.decode()
    assert page.count('class="muted gpm-absent"') == 2
    assert 'data-gpus="0 1 2 3">GPU 0, 1, 2, 3 · NVIDIA H100 80GB HBM3: no GPM metrics, the driver' in page
    assert "charted for them" in page
    assert 'data-gpus="4">GPU 4 · NVIDIA L40S: no GPM metrics, this GPU has no GPM' in page


def test_the_reason_names_mig_and_the_driver_when_they_are_why():
    parent = Accelerator(vendor="nvidia", name="NVIDIA H100", uuid="GPU-1", gpm_supported=False)
    mig = Accelerator(vendor="nvidia", name="1g.10gb", parent_uuid="GPU-1", gpm_supported=None)
    assert (
        gpm_absent_reason(mig, parent)
        == "its GPU (NVIDIA H100) has no GPM: NVML's GPU Performance Monitoring needs Hopper or later"
    )
    assert "MIG device" in gpm_absent_reason(mig, None)
    assert "driver" in gpm_absent_reason(Accelerator(vendor="nvidia", name="H100", gpm_supported=None))
    assert gpm_absent_reason(Accelerator(vendor="nvidia", gpm_supported=True)) is None
    assert "not an NVIDIA GPU" in gpm_absent_reason(Accelerator(vendor="apple", gpm_supported=None))


def test_a_job_page_charts_its_own_gpus_over_its_run(client, operator, fleet, now):
    started = now - timedelta(minutes=15)
    job = Job.objects.create(
        owner=operator,
        name="tiny",
        kind="train",
        argv=["x"],
        machine=fleet["tiny"],
        assigned_gpus=[0],
        status="succeeded",
        attempt=1,
        started_at=started,
        finished_at=now - timedelta(minutes=5),
    )
    client.force_login(operator)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="gpm-chart-0"' in page
    config = json.loads(re.search(r'<script id="gpm-config" type="application/json">(.*?)</script>', page).group(1))
    assert config["gpus"] == [0] and config["since"] == started.isoformat()
