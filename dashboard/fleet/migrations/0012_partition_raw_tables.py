"""The raw telemetry tables become partitioned by day of ``ts`` on PostgreSQL, rows kept.

Each table is rebuilt: a partitioned copy with a partition per day from its oldest day (at most
``MAX_DAYS_BACK`` back; older rows go to the default partition) to a week ahead, the rows copied
in one ``INSERT ... SELECT``, the old table dropped and the copy renamed, then its keys and indexes
added. Unique keys gain ``ts`` (a partitioned table's unique keys must hold its partition key) on
every database. SQLite keeps plain tables. Migrating back copies the rows into plain tables again.
"""

from datetime import UTC, datetime, timedelta

from django.db import migrations, models

MAX_DAYS_BACK = 62
UNIQUE = {
    "systemsample": ("systemsample_unique_seq", ("machine", "seq")),
    "gpusample": ("gpusample_unique_seq", ("machine", "seq", "gpu_index")),
    "throughputsample": ("throughput_unique", ("machine", "seq", "job_key", "source")),
}


def _rebuild(schema_editor, model, unique: models.UniqueConstraint) -> None:
    from dashboard.fleet import partitions

    table = model._meta.db_table
    part, seq = f"{table}__part", f"{table}_pid_seq"
    run = schema_editor.execute
    run(f"CREATE TABLE {part} (LIKE {table} INCLUDING DEFAULTS) PARTITION BY RANGE (ts)")
    run(f"CREATE SEQUENCE IF NOT EXISTS {seq} AS bigint")  # kept by a migration back and forth
    run(f"ALTER SEQUENCE {seq} OWNED BY {part}.id")
    run(f"ALTER TABLE {part} ALTER COLUMN id SET DEFAULT nextval('{seq}')")
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"SELECT min(ts), coalesce(max(id), 0) FROM {table}")
        oldest, top = cursor.fetchone()
    today = datetime.now(UTC).date()
    day = max(oldest.astimezone(UTC).date(), today - timedelta(days=MAX_DAYS_BACK)) if oldest else today
    while day <= today + timedelta(days=partitions.DAYS_AHEAD):
        partitions.create_day(table, day, parent=part)
        day += timedelta(days=1)
    run(f"CREATE TABLE {table}_default PARTITION OF {part} DEFAULT")
    run(f"INSERT INTO {part} SELECT * FROM {table}")
    run(f"SELECT setval('{seq}', {top + 1}, false)")
    run(f"DROP TABLE {table}")
    run(f"ALTER TABLE {part} RENAME TO {table}")
    run(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id, ts)")
    run(
        f"ALTER TABLE {table} ADD CONSTRAINT {table}_machine_id_fk FOREIGN KEY (machine_id) "
        "REFERENCES fleet_machine (id) DEFERRABLE INITIALLY DEFERRED"
    )
    schema_editor.add_constraint(model, unique)
    for index in model._meta.indexes:
        schema_editor.add_index(model, index)


def _swap_sqlite(schema_editor, model, unique: models.UniqueConstraint) -> None:
    """SQLite rebuilds the table from the model's constraints: give it the state after this step
    (the historical model a RunPython inside SeparateDatabaseAndState gets is the one before)."""
    model._meta.constraints = [c for c in model._meta.constraints if c.name != unique.name] + [unique]
    schema_editor.add_constraint(model, unique)


def _unpartition(schema_editor, model, unique: models.UniqueConstraint) -> None:
    """Back to a plain table (for migrating back, as tests do): the same rows, ids and keys."""
    table = model._meta.db_table
    plain, seq = f"{table}__plain", f"{table}_pid_seq"
    run = schema_editor.execute
    run(f"CREATE TABLE {plain} (LIKE {table} INCLUDING DEFAULTS)")
    run(f"ALTER SEQUENCE {seq} OWNED BY {plain}.id")
    run(f"INSERT INTO {plain} SELECT * FROM {table}")
    run(f"DROP TABLE {table}")
    run(f"ALTER TABLE {plain} RENAME TO {table}")
    run(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id)")
    run(
        f"ALTER TABLE {table} ADD CONSTRAINT {table}_machine_id_fk FOREIGN KEY (machine_id) "
        "REFERENCES fleet_machine (id) DEFERRABLE INITIALLY DEFERRED"
    )
    schema_editor.add_constraint(model, unique)
    for index in model._meta.indexes:
        schema_editor.add_index(model, index)


def backwards(apps, schema_editor):
    for name, (constraint, fields) in UNIQUE.items():
        model = apps.get_model("fleet", name)
        old = models.UniqueConstraint(fields=fields, name=constraint)
        if schema_editor.connection.vendor == "postgresql":
            _unpartition(schema_editor, model, old)
        else:
            _swap_sqlite(schema_editor, model, old)


def forwards(apps, schema_editor):
    for name, (constraint, fields) in UNIQUE.items():
        model = apps.get_model("fleet", name)
        unique = models.UniqueConstraint(fields=(*fields, "ts"), name=constraint)
        if schema_editor.connection.vendor == "postgresql":
            _rebuild(schema_editor, model, unique)
        else:
            _swap_sqlite(schema_editor, model, unique)


class Migration(migrations.Migration):
    atomic = True
    dependencies = [("fleet", "0011_machine_state")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                op
                for name, (constraint, fields) in UNIQUE.items()
                for op in (
                    migrations.RemoveConstraint(model_name=name, name=constraint),
                    migrations.AddConstraint(
                        model_name=name, constraint=models.UniqueConstraint(fields=(*fields, "ts"), name=constraint)
                    ),
                )
            ],
            database_operations=[migrations.RunPython(forwards, backwards)],
        )
    ]
