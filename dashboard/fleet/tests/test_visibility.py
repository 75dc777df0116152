"""``dashboard.fleet.visibility``: a user sees their teams' machines and the shared pool; staff see
every machine (and no query is spent finding out); a staff token limited to a team sees that team's."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.db.models import Count
from django.http import Http404
from django.test.utils import CaptureQueriesContext

from dashboard.accounts.models import ApiToken
from dashboard.fleet import visibility
from dashboard.fleet.models import GpuRollup, Machine
from dashboard.teams import service
from dashboard.teams.models import TokenScope

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet(db):
    a, b = service.create_team(None, "team-a", "Team A"), service.create_team(None, "team-b", "Team B")
    machines = {
        "a-box": Machine.objects.create(name="a-box", team=a),
        "b-box": Machine.objects.create(name="b-box", team=b),
        "pool-box": Machine.objects.create(name="pool-box"),
    }
    return {"a": a, "b": b, **machines}


@pytest.fixture
def alice(django_user_model, fleet):
    user = django_user_model.objects.create_user("alice", password="alice-pass")
    service.set_role(None, fleet["a"], user, "viewer")
    return user


def test_a_member_sees_their_teams_machines_and_the_shared_pool(alice, fleet):
    assert sorted(visibility.visible_machines(alice).values_list("name", flat=True)) == ["a-box", "pool-box"]
    assert visibility.visible_machine_ids(alice) == {fleet["a-box"].pk, fleet["pool-box"].pk}
    assert visibility.machine_or_404(alice, "pool-box") == fleet["pool-box"]
    for name in ("b-box", "no-such-box"):  # another team's machine reads as one that does not exist
        with pytest.raises(Http404):
            visibility.machine_or_404(alice, name)


def test_staff_see_every_machine_and_their_ids_are_none(admin_user, fleet, django_assert_num_queries):
    assert visibility.visible_machines(admin_user).count() == 3
    with django_assert_num_queries(0):
        assert visibility.visible_machine_ids(admin_user) is None


def test_a_staff_token_limited_to_a_team_sees_that_teams_machines_and_the_pool(admin_user, fleet):
    token = ApiToken.issue(admin_user, "ci")
    user = ApiToken.authenticate(token)
    TokenScope.objects.create(token=user.api_token, team=fleet["b"])
    assert sorted(visibility.visible_machines(user).values_list("name", flat=True)) == ["b-box", "pool-box"]


def test_only_narrows_rows_to_the_machine_ids_and_none_keeps_them_all(fleet):
    for name in ("a-box", "b-box"):
        GpuRollup.objects.create(
            machine=fleet[name], gpu_index=0, resolution_s=60, bucket="2026-01-01T00:00Z", count=6, util_percent_mean=1
        )
    rows = GpuRollup.objects.all()
    assert visibility.only(rows, None).count() == 2
    assert list(visibility.only(rows, {fleet["a-box"].pk}).values_list("machine__name", flat=True)) == ["a-box"]
    assert list(visibility.only(Machine.objects.all(), set(), "pk")) == []


def test_only_with_many_machines_sends_one_parameter_and_keeps_exactly_those(fleet):
    """Past 20 ids PostgreSQL gets one bigint array (hashed once), not a placeholder per id; the rows
    are the same."""
    many = [Machine.objects.create(name=f"m-{i:02d}") for i in range(45)]
    wanted = {m.pk for m in many[::2]} | {fleet["a-box"].pk}
    with CaptureQueriesContext(connection) as queries:
        names = set(visibility.only(Machine.objects.all(), wanted, "pk").values_list("name", flat=True))
    assert names == {m.name for m in many[::2]} | {"a-box"}
    if connection.vendor == "postgresql":
        assert "= ANY(" in queries.captured_queries[0]["sql"] and "::bigint[]" in queries.captured_queries[0]["sql"]
    assert set(visibility.only(Machine.objects.all(), wanted - {fleet["a-box"].pk} | {10**9}, "pk")) == set(many[::2])
    # Through a machine's foreign key (the default field), grouped as the fleet's charts group them.
    bucket = datetime(2026, 12, 1, tzinfo=UTC)
    GpuRollup.objects.bulk_create(
        GpuRollup(machine=m, gpu_index=g, resolution_s=60, bucket=bucket, count=6) for m in many for g in range(2)
    )
    rows = visibility.only(GpuRollup.objects.all(), wanted).values("machine_id").annotate(n=Count("pk")).order_by()
    assert {r["machine_id"]: r["n"] for r in rows} == {m.pk: 2 for m in many[::2]}
