from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0006_throughput_without_job_link"),
    ]

    operations = [
        migrations.AddField(
            model_name="machine",
            name="storage_read_bytes_per_s",
            field=models.FloatField(blank=True, null=True),
        ),
    ]
