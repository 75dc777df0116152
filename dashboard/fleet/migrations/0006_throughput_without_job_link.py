"""ThroughputSample keeps the reported job id (``job_key``) and no foreign key to jobs.Job.

Telemetry sits below jobs: the link made fleet's and jobs' migrations depend on each other. No
row is lost: ``job_key`` already holds the id of every linked row, and the jobs app now checks
at read time that the job ran on the row's machine (what the link recorded at ingest).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0005_worker_policy"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="throughputsample", name="throughput_job_ts"),
        migrations.RemoveField(model_name="throughputsample", name="job"),
        migrations.AddIndex(
            model_name="throughputsample",
            index=models.Index(fields=["job_key", "ts"], name="throughput_job_key_ts"),
        ),
    ]
