# The backfill policy moves from economics to jobs, because placement (in jobs) reads it and
# economics sits above jobs. Only Django's model state moves: the table keeps its name
# (economics_backfillpolicy) and its row; economics 0004 drops the model from its own state.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0007_secret_env"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="BackfillPolicy",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("enabled", models.BooleanField(default=False)),
                        ("changed_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "changed_by",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={"verbose_name_plural": "backfill policy", "db_table": "economics_backfillpolicy"},
                ),
            ],
            database_operations=[],
        ),
        migrations.AddField(model_name="job", name="backfill", field=models.BooleanField(default=False)),
    ]
