"""Hot state moves from fleet_machine to fleet_machinestate (1:1), rows and values kept."""

import django.db.models.deletion
from django.db import migrations, models

HOT = ("last_seen_at", "last_seq", "spool_id", "seq_offset", "spool_dropped", "tokens_dropped", "latest")


def copy_state(apps, schema_editor):
    from dashboard.fleet.models import gpu_summary  # the one definition of the summary columns

    Machine = apps.get_model("fleet", "Machine")
    MachineState = apps.get_model("fleet", "MachineState")
    batch = []
    for row in Machine.objects.values("id", *HOT).iterator(chunk_size=1000):
        batch.append(MachineState(machine_id=row.pop("id"), **row, **gpu_summary(row["latest"])))
        if len(batch) >= 1000:
            MachineState.objects.bulk_create(batch)
            batch = []
    MachineState.objects.bulk_create(batch)


def copy_back(apps, schema_editor):
    Machine = apps.get_model("fleet", "Machine")
    MachineState = apps.get_model("fleet", "MachineState")
    for state in MachineState.objects.all().iterator(chunk_size=1000):
        Machine.objects.filter(pk=state.machine_id).update(**{f: getattr(state, f) for f in HOT})


class Migration(migrations.Migration):
    dependencies = [("fleet", "0010_token_active_time")]

    operations = [
        migrations.CreateModel(
            name="MachineState",
            fields=[
                (
                    "machine",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="state",
                        serialize=False,
                        to="fleet.machine",
                    ),
                ),
                ("last_seen_at", models.DateTimeField(blank=True, null=True)),
                ("last_seq", models.BigIntegerField(default=0)),
                ("spool_id", models.CharField(blank=True, max_length=64)),
                ("seq_offset", models.BigIntegerField(default=0)),
                ("spool_dropped", models.BigIntegerField(default=0)),
                ("tokens_dropped", models.BigIntegerField(default=0)),
                ("latest", models.JSONField(blank=True, null=True)),
                ("gpu_count", models.PositiveSmallIntegerField(default=0)),
                ("gpu_util_percent", models.FloatField(blank=True, null=True)),
                ("gpu_mem_used_bytes", models.FloatField(blank=True, null=True)),
                ("gpu_mem_total_bytes", models.FloatField(blank=True, null=True)),
            ],
        ),
        migrations.RunPython(copy_state, copy_back),
        *(migrations.RemoveField(model_name="machine", name=name) for name in HOT),
    ]
