# Every job belongs to a team: existing jobs move into the default team (teams 0002 creates it).

import django.db.models.deletion
from django.db import migrations, models

import dashboard.teams.models


def into_default_team(apps, schema_editor):
    Team = apps.get_model("teams", "Team")
    Job = apps.get_model("jobs", "Job")
    team, _ = Team.objects.get_or_create(slug="default", defaults={"name": "Default"})
    Job.objects.filter(team__isnull=True).update(team=team)


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0004_log_bytes"),
        ("teams", "0002_default_team"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="team",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.PROTECT, related_name="jobs", to="teams.team"
            ),
        ),
        migrations.RunPython(into_default_team, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="job",
            name="team",
            field=models.ForeignKey(
                default=dashboard.teams.models.default_team_id,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="jobs",
                to="teams.team",
            ),
        ),
        migrations.AddField(
            model_name="job",
            name="borrowing",
            field=models.BooleanField(default=False),
        ),
    ]
