"""A fresh install also says when a machine goes silent and when its agent loses samples (its spool
full, or batches the server refused): the two things an operator cannot see from the GPU rules.
Enabled, for every machine, without a webhook. As in 0003, a kind that already has a rule is left
alone, and reverting removes only the rules this migration made."""

from django.db import migrations

DEFAULTS = [
    # kind, name, threshold (minutes: silent this long / quiet this long before it resolves)
    ("machine_offline", "Machine offline", 5),
    ("spool_dropping", "Agent losing samples", 30),
]


def create(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    for kind, name, threshold in DEFAULTS:
        if not AlertRule.objects.filter(kind=kind).exists():
            AlertRule.objects.create(name=name, kind=kind, threshold=threshold, enabled=True)


def remove(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    for kind, name, _ in DEFAULTS:
        AlertRule.objects.filter(kind=kind, name=name, created_by=None).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0004_spool_watch_refused")]
    operations = [migrations.RunPython(create, remove)]
