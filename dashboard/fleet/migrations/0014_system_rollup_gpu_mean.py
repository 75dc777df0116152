"""``SystemRollup.gpu_util_percent_mean``: the mean over a machine's GPUs of their utilisation in
the bucket, written by the rollups with the GPU buckets (``rollup.gpu_means``) so the fleet page's
sparklines read one narrow row per machine and minute instead of averaging its GPUs' rows.

The last two hours of minute buckets are filled here (what the sparklines show: the last hour);
older rows keep NULL until a rollup rewrites them, and nothing else reads the column.
"""

from datetime import timedelta

from django.db import migrations, models
from django.utils import timezone

BACKFILL = timedelta(hours=2)


def backfill(apps, schema_editor):
    connection = schema_editor.connection
    since = connection.ops.adapt_datetimefield_value(timezone.now() - BACKFILL)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE fleet_systemrollup SET gpu_util_percent_mean = (SELECT AVG(g.util_percent_mean) "
            "FROM fleet_gpurollup g WHERE g.machine_id = fleet_systemrollup.machine_id "
            "AND g.resolution_s = fleet_systemrollup.resolution_s AND g.bucket = fleet_systemrollup.bucket) "
            "WHERE resolution_s = 60 AND bucket >= %s",
            [since],
        )


class Migration(migrations.Migration):
    dependencies = [("fleet", "0013_throughput_token_kind_indexes")]

    operations = [
        migrations.AddField(
            model_name="systemrollup", name="gpu_util_percent_mean", field=models.FloatField(null=True)
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
