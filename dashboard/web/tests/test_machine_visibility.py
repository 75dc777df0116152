"""Another team's machine is invisible everywhere: every per-machine page and API call answers 404
as for a name nobody uses, and every fleet-wide figure (series, history, assemblies, reports,
planner, /metrics, alerts, the submit form, placement) leaves it out, while it keeps the user's
teams' machines and the shared pool. Staff still see every machine.

The fleet: ``a-box`` (team A), ``b-box`` (team B) and ``pool-box`` (no team), the same assembly,
with hours of GPU utilisation 20 %, 90 % and 40 %, tokens, and a cost profile each; the user is
``alice``, an operator of team A.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.utils import timezone

from dashboard.alerts.models import Alert, AlertRule
from dashboard.economics.models import CostProfile, ValueRates
from dashboard.economics.tests import seed
from dashboard.fleet import throughput
from dashboard.fleet.models import Machine
from dashboard.jobs.models import Job
from dashboard.jobs.tests.conftest import member, online, owner, stranger, team_a, team_b  # noqa: F401
from dashboard.web import fleet_history

pytestmark = pytest.mark.django_db

UTIL = {"a-box": 20.0, "b-box": 90.0, "pool-box": 40.0}
GENERATED = {"a-box": 1_000, "b-box": 70_000, "pool-box": 3_000}


@pytest.fixture(autouse=True)
def empty_cache():
    cache.clear()  # fleet days and rankings are cached per fleet, not per user
    yield
    cache.clear()


@pytest.fixture
def fleet(team_a, team_b):  # noqa: F811
    now = timezone.now()
    ValueRates.objects.create(machine=None, currency="USD", serve_per_million_generated=Decimal("10"))
    teams = {"a-box": team_a, "b-box": team_b, "pool-box": None}
    for i, (name, team) in enumerate(teams.items()):
        m = seed.machine_with(name, 2, created=now - timedelta(days=10))
        Machine.objects.filter(pk=m.pk).update(team=team)
        seed.hours(m, seed.today() - timedelta(days=2), 24, 300.0, UTIL[name])
        for seq in range(1, 4):
            seed.tokens(m, seq, now - timedelta(minutes=5 * seq), generated=GENERATED[name])
        CostProfile.objects.create(
            name=f"{name} profile",
            machine=m,
            currency="USD",
            purchase_price=Decimal(10_000 * (i + 1)),
            electricity_price_per_kwh=Decimal("0.25"),
        )
    # b-box alone trained: whether the fleet page draws a training chart depends on seeing it.
    seed.tokens(Machine.objects.get(name="b-box"), 9, now - timedelta(minutes=2), train=5_000)
    throughput.rebuild_rollups(Machine.objects.values_list("pk", flat=True))  # the seed wrote rows, not windows
    rule = AlertRule.objects.create(name="Offline", kind="machine_offline", threshold=5)
    for name in teams:
        Alert.objects.create(rule=rule, key=name, machine=Machine.objects.get(name=name), message=f"{name} is offline")
    return teams


# (method, url) with {name} for the machine: every page and API call about one machine.
PER_MACHINE = [
    ("get", "/api/v1/machines/{name}"),
    ("get", "/api/v1/machines/{name}/throughput"),
    ("get", "/api/v1/machines/{name}/series?metric=tokens.generated"),
    ("get", "/api/v1/machines/{name}/series?metric=gpu.util_percent"),
    ("get", "/api/v1/machines/{name}/roi"),
    ("get", "/api/v1/machines/{name}/capacity"),
    ("get", "/api/v1/machines/{name}/share"),
    ("get", "/machines/{name}/"),
    ("get", "/machines/{name}/series.csv"),
    ("get", "/machines/{name}/panels/throughput/"),
    ("get", "/machines/{name}/panels/jobs/"),
    ("get", "/machines/{name}/panels/economics/"),
    ("get", "/economics/machines/{name}/"),
    ("get", "/reports/machines/{name}/"),
    ("get", "/reports/machines/{name}.csv"),
    ("post", "/alerts/ghosts/{name}/7/cleanup/"),
]


@pytest.mark.parametrize(("method", "url"), PER_MACHINE)
def test_another_teams_machine_is_404_on_every_machine_page_and_call_and_the_pool_is_not(
    client,
    owner,  # noqa: F811
    admin_user,
    fleet,
    method,
    url,
):
    client.force_login(owner)
    assert getattr(client, method)(url.format(name="b-box")).status_code == 404
    assert getattr(client, method)(url.format(name="no-such-box")).status_code == 404
    for name in ("a-box", "pool-box"):
        assert getattr(client, method)(url.format(name=name)).status_code in (200, 302), name
    client.force_login(admin_user)
    assert getattr(client, method)(url.format(name="b-box")).status_code in (200, 302)


def test_the_fleet_series_has_the_users_teams_and_the_pools_machines_only(client, owner, admin_user, fleet):  # noqa: F811
    def machines(user) -> list[str]:
        client.force_login(user)
        r = client.get("/api/v1/fleet/series", {"metric": "tokens.generated", "since": "1h"})
        assert r.status_code == 200
        return sorted(s["machine"] for s in r.json()["series"])

    assert machines(owner) == ["a-box", "pool-box"]
    assert machines(admin_user) == ["a-box", "b-box", "pool-box"]


def test_the_fleet_history_counts_only_visible_machines(client, owner, admin_user, fleet):  # noqa: F811
    client.force_login(owner)
    mine = client.get("/api/v1/fleet/history", {"since": "7d"}).json()
    assert mine["utilisation"]["mean"] and set(mine["utilisation"]["mean"]) == {30.0}  # (20 + 40) / 2
    assert set(mine["utilisation"]["p95"]) == {40.0}  # not b-box's 90
    assert sorted(mine["money"]["machines"]) == ["a-box", "pool-box"]
    assert "b-box" not in str(mine)
    client.force_login(admin_user)
    every = client.get("/api/v1/fleet/history", {"since": "7d"}).json()
    assert set(every["utilisation"]["mean"]) == {50.0}  # (20 + 90 + 40) / 3
    assert set(every["utilisation"]["p95"]) == {90.0}
    assert sorted(every["money"]["machines"]) == ["a-box", "b-box", "pool-box"]
    # Each day's money over the team's machines is every machine's less b-box's.
    now = timezone.now()
    ids = {m.name: m.pk for m in Machine.objects.all()}
    span = (now - timedelta(days=7), now)
    seen = fleet_history.money(*span, now=now, machine_ids={ids["a-box"], ids["pool-box"]})
    whole = fleet_history.money(*span, now=now)
    b_only = fleet_history.money(*span, now=now, machine_ids={ids["b-box"]})
    assert [d["t"] for d in seen["days"]] == [d["t"] for d in whole["days"]] == [d["t"] for d in b_only["days"]]
    assert sum(d["cost"] or 0 for d in b_only["days"]) > 0
    for a, w, b in zip(seen["days"], whole["days"], b_only["days"], strict=True):
        assert (a["cost"] or 0) == pytest.approx((w["cost"] or 0) - (b["cost"] or 0))


def test_the_assemblies_api_and_the_economics_page_leave_other_teams_machines_out(
    client,
    owner,  # noqa: F811
    admin_user,
    fleet,
):
    client.force_login(owner)
    [row] = client.get("/api/v1/assemblies").json()["assemblies"]
    assert row["machines"] == ["a-box", "pool-box"]
    page = client.get("/economics/").content.decode()
    assert "a-box" in page and "pool-box" in page and "b-box" not in page
    client.force_login(admin_user)
    [row] = client.get("/api/v1/assemblies").json()["assemblies"]
    assert row["machines"] == ["a-box", "b-box", "pool-box"]
    assert "b-box" in client.get("/economics/").content.decode()


def hidden(page: str, attribute: str) -> bool:
    tag = re.search(r"<[^>]*" + re.escape(attribute) + r"[^>]*>", page)
    assert tag, attribute
    return " hidden" in tag.group(0)


def test_the_fleet_pages_token_charts_count_only_visible_machines(client, owner, admin_user, fleet):  # noqa: F811
    client.force_login(owner)
    page = client.get("/").content.decode()
    assert "b-box" not in page
    assert not hidden(page, 'data-kind="generated"') and hidden(page, 'data-kind="train"')
    client.force_login(admin_user)
    page = client.get("/").content.decode()
    assert not hidden(page, 'data-kind="generated"') and not hidden(page, 'data-kind="train"')


def test_reports_planner_metrics_and_alerts_leave_other_teams_machines_out(
    client,
    owner,  # noqa: F811
    admin_user,
    fleet,
):
    client.force_login(owner)
    for url in ("/reports/", "/reports/fleet.csv", "/metrics", "/alerts/", "/jobs/new/", "/economics/plan/"):
        body = client.get(url).content.decode()
        assert "a-box" in body and "pool-box" in body and "b-box" not in body, url
    plan = client.post("/api/v1/plan", {"serve": [{"params_b": 8, "tokens_per_day": 1e6}]}, "application/json")
    keys = {row["key"] for row in plan.json()["rows"]}
    assert {"fleet:a-box", "fleet:pool-box"} <= keys and "fleet:b-box" not in keys
    assert "b-box" not in plan.content.decode()
    client.force_login(admin_user)
    for url in ("/reports/", "/reports/fleet.csv", "/metrics", "/alerts/", "/jobs/new/"):
        assert "b-box" in client.get(url).content.decode(), url


@pytest.fixture
def gpus(team_a, team_b):  # noqa: F811
    """Online machines with room: a-gpu (team A, 1 GPU), b-gpu (team B, 4 GPUs), pool-gpu (1 GPU)."""
    return [online("a-gpu", team_a), online("b-gpu", team_b, gpus=4), online("pool-gpu")]


def test_placement_names_only_machines_the_user_sees(client, owner, admin_user, gpus):  # noqa: F811
    client.force_login(owner)
    check = client.get("/api/v1/jobs/placement", {"gpus": 1}).json()
    assert check == {"refusal": None, "ready": ["a-gpu", "pool-gpu"]}
    # Another team's machine, named, is no machine at all: as for a name nobody uses.
    for name in ("b-gpu", "nowhere"):
        check = client.get("/api/v1/jobs/placement", {"gpus": 1, "machine": name}).json()
        assert check == {"refusal": {"field": "machine", "error": f"no machine named {name!r}"}, "ready": []}
    # Only b-gpu has 4 GPUs: a preemptible job could borrow it, so it is no refusal, but not named.
    assert client.get("/api/v1/jobs/placement", {"gpus": 4}).json() == {"refusal": None, "ready": []}
    refusal = client.get("/api/v1/jobs/placement", {"gpus": 8}).json()["refusal"]
    assert refusal["error"] == (
        "no machine in the fleet has 8 GPUs; the largest you can see is a-gpu with 1 GPU of 79.6 GiB"
    )
    r = client.post(
        "/api/v1/jobs", {"name": "x", "kind": "train", "command": ["true"], "machine": "b-gpu"}, "application/json"
    )
    assert r.status_code == 400 and r.json() == {"error": "machine: no machine named 'b-gpu'"}
    form = client.post("/jobs/new/", {"name": "x", "kind": "train", "command": "true", "gpus": "1", "machine": "b-gpu"})
    page = form.content.decode()
    assert form.status_code == 200 and "no machine named &#x27;b-gpu&#x27;" in page
    assert 'value="a-gpu"' in page and 'value="b-gpu"' not in page and not Job.objects.exists()
    client.force_login(admin_user)
    assert client.get("/api/v1/jobs/placement", {"gpus": 1}).json()["ready"] == ["a-gpu", "b-gpu", "pool-gpu"]
    refusal = client.get("/api/v1/jobs/placement", {"gpus": 8}).json()["refusal"]
    assert refusal["error"].endswith("the largest is b-gpu with 4 GPUs of 79.6 GiB")
