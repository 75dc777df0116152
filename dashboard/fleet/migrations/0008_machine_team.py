# A machine belongs to a team or (empty) to the shared pool; existing machines stay shared.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0007_storage_read_speed"),
        ("teams", "0002_default_team"),
    ]

    operations = [
        migrations.AddField(
            model_name="machine",
            name="team",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="machines",
                to="teams.team",
            ),
        ),
    ]
