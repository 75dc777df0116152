# The backfill policy's model now lives in jobs (jobs 0008, which names this table); the table and
# its row stay where they are, so only the state is removed here.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("economics", "0003_backfill_policy"),
        ("jobs", "0008_backfill"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="BackfillPolicy")],
            database_operations=[],
        ),
    ]
