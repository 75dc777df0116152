"""Existing installs: one default team; every existing user joins it with the role their global
group gave them (staff as admins). Jobs move into it in the jobs app's migration."""

from django.db import migrations


def forwards(apps, schema_editor):
    Team = apps.get_model("teams", "Team")
    Membership = apps.get_model("teams", "Membership")
    User = apps.get_model("auth", "User")
    team, _ = Team.objects.get_or_create(slug="default", defaults={"name": "Default"})
    for user in User.objects.all():
        if user.is_staff:
            role = "admin"
        elif user.groups.filter(name="operator").exists():
            role = "operator"
        else:
            role = "viewer"
        Membership.objects.get_or_create(user=user, team=team, defaults={"role": role})


class Migration(migrations.Migration):
    dependencies = [("teams", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
