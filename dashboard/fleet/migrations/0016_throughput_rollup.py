"""``ThroughputRollup``: tokens per machine, job and minute or hour, for the token charts past a
few hours (an hour of a 1,000-machine fleet is 360,000 token rows; bench/README.md).

Ingest writes them from now on; ``backfill`` fills them from the token rows already stored, with
the same rule (per window and job, each kind's largest count among its sources), in SQL.
"""

import django.db.models.deletion
from django.db import migrations, models

RESOLUTIONS = (60, 3600)


def backfill(apps, schema_editor):
    connection = schema_editor.connection
    per_window = (
        "SELECT machine_id, seq, job_key, ts, MAX(prompt_tokens) AS p, MAX(generated_tokens) AS g, "
        "MAX(train_tokens) AS t FROM fleet_throughputsample "
        "WHERE prompt_tokens > 0 OR generated_tokens > 0 OR train_tokens > 0 "
        "GROUP BY machine_id, seq, job_key, ts"
    )
    with connection.cursor() as cursor:
        for resolution in RESOLUTIONS:
            if connection.vendor == "postgresql":
                bucket = f"to_timestamp(FLOOR(date_part('epoch', w.ts) / {resolution}) * {resolution})"
            else:  # SQLite's datetimes are UTC text: cut it to the minute or the hour (no rounding)
                bucket = "substr(w.ts, 1, 16) || ':00'" if resolution == 60 else "substr(w.ts, 1, 13) || ':00:00'"
            cursor.execute(
                "INSERT INTO fleet_throughputrollup "
                "(machine_id, job_key, resolution_s, bucket, prompt_tokens, generated_tokens, train_tokens) "
                f"SELECT w.machine_id, w.job_key, {resolution}, {bucket}, SUM(w.p), SUM(w.g), SUM(w.t) "
                f"FROM ({per_window}) w GROUP BY w.machine_id, w.job_key, {bucket}"
            )


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0015_machine_state_refusals"),
    ]

    operations = [
        migrations.CreateModel(
            name="ThroughputRollup",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("job_key", models.BigIntegerField(default=0)),
                ("resolution_s", models.PositiveIntegerField()),
                ("bucket", models.DateTimeField()),
                ("prompt_tokens", models.BigIntegerField(default=0)),
                ("generated_tokens", models.BigIntegerField(default=0)),
                ("train_tokens", models.BigIntegerField(default=0)),
                (
                    "machine",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="+", to="fleet.machine"
                    ),
                ),
            ],
            options={
                "indexes": [
                    models.Index(fields=["resolution_s", "bucket"], name="throughputrollup_bucket"),
                    models.Index(fields=["job_key", "resolution_s", "bucket"], name="throughputrollup_job"),
                ],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("machine", "resolution_s", "bucket", "job_key"), name="throughputrollup_unique"
                    )
                ],
            },
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
