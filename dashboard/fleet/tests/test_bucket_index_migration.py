"""Fleet 0017: the rollups' (resolution_s, bucket) indexes, built concurrently on PostgreSQL and safe
to run again after a build that was interrupted or done by hand."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from conftest import migrate

BEFORE = [("fleet", "0016_throughput_rollup")]


def index_state(name: str) -> bool | None:
    """PostgreSQL: whether the index is valid (None: there is none)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
            [name],
        )
        row = cursor.fetchone()
    return None if row is None else row[0]


@pytest.mark.django_db(transaction=True)
def test_the_indexes_are_built_and_a_leftover_does_not_stop_the_migration():
    migrate(BEFORE)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # What an operator may have built ahead of the deploy (kept), and what a killed
            # concurrent build leaves: an index of that name marked invalid in the catalogue, which
            # only a superuser can mark by hand (the tests' PostgreSQL user is one, on CI too).
            cursor.execute("CREATE INDEX systemrollup_bucket ON fleet_systemrollup (resolution_s, bucket)")
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            if cursor.fetchone()[0]:
                cursor.execute("CREATE INDEX gpurollup_bucket ON fleet_gpurollup (machine_id)")
                cursor.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'gpurollup_bucket'::regclass")
                assert index_state("gpurollup_bucket") is False

    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    with connection.cursor() as cursor:
        for table, name in (("fleet_systemrollup", "systemrollup_bucket"), ("fleet_gpurollup", "gpurollup_bucket")):
            described = connection.introspection.get_constraints(cursor, table)[name]
            assert described["index"] and described["columns"] == ["resolution_s", "bucket"], (name, described)
    if connection.vendor == "postgresql":
        assert index_state("systemrollup_bucket") is True and index_state("gpurollup_bucket") is True
