"""Indexes on (resolution_s, bucket) of the system and GPU rollups.

Their only index led with the machine, so every read of a time range across the fleet scanned every
bucket kept (90 days of minutes by default): the fleet page's utilisation chart at each refresh,
the efficiency ranking each minute, the hour closing in each rollup run, retention, reports. At
1,000 machines with a day kept, the chart's hour took 0.9 s, most of it reading the other 23 hours
(bench/README.md, "Fleet-wide reads of the rollups").

Built CONCURRENTLY on PostgreSQL, outside a transaction, so ingest and rollups keep writing while a
large table is indexed; SQLite builds them the ordinary way. A concurrent build that was interrupted
(a deploy's timeout on a billion rows) leaves an invalid index behind, and the next run would stop
on its name: such a leftover is dropped and built again, and a valid one (built by hand ahead of
the deploy) is kept.
"""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class AddIndexConcurrentlyOnPostgres(AddIndexConcurrently):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return migrations.AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = %s AND pg_table_is_visible(c.oid)",
                [self.index.name],
            )
            found = cursor.fetchone()
        if found and found[0]:
            return None  # built already
        if found:
            schema_editor.execute(f"DROP INDEX CONCURRENTLY {schema_editor.quote_name(self.index.name)}")
        return super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        return migrations.AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [("fleet", "0016_throughput_rollup")]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="systemrollup",
            index=models.Index(fields=["resolution_s", "bucket"], name="systemrollup_bucket"),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="gpurollup",
            index=models.Index(fields=["resolution_s", "bucket"], name="gpurollup_bucket"),
        ),
    ]
