"""Existing data moves into the default team: rows written under the schema before teams survive
the migration with their users in the team (by their global role) and their jobs in it."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("fleet", "0007_storage_read_speed"), ("jobs", "0004_log_bytes"), ("teams", None)]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state([t for t in targets if t[1]]).apps


@pytest.mark.django_db(transaction=True)
def test_existing_users_jobs_and_machines_move_into_the_default_team_and_the_shared_pool():
    old = migrate(BEFORE)
    User, Group = old.get_model("auth", "User"), old.get_model("auth", "Group")
    op = User.objects.create(username="op")
    op.groups.add(Group.objects.get_or_create(name="operator")[0])
    User.objects.create(username="watcher")
    User.objects.create(username="root", is_staff=True)
    old.get_model("fleet", "Machine").objects.create(name="gpu-01")
    job = old.get_model("jobs", "Job").objects.create(owner=op, name="t", kind="train", argv=["x"], gpus=0)

    executor = MigrationExecutor(connection)
    migrate(executor.loader.graph.leaf_nodes())

    from dashboard.fleet.models import Machine
    from dashboard.jobs.models import Job
    from dashboard.teams.models import Membership, Team

    default = Team.objects.get(slug="default")
    assert Job.objects.get(pk=job.pk).team == default
    assert not Job.objects.get(pk=job.pk).borrowing
    assert Machine.objects.get(name="gpu-01").team is None  # the shared pool, as before teams
    roles = dict(Membership.objects.filter(team=default).values_list("user__username", "role"))
    assert roles == {"op": "operator", "watcher": "viewer", "root": "admin"}
