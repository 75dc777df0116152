"""Load the shipped hardware catalogue (data/ai_hardware_facts.csv, see data/PROVENANCE.md)."""

from django.db import migrations


def load(apps, schema_editor):
    from dashboard.economics.catalogue import shipped_rows

    HardwareSpec = apps.get_model("economics", "HardwareSpec")
    for row in shipped_rows():
        # A re-run keeps the user's rows and refreshes shipped ones of the same name.
        HardwareSpec.objects.update_or_create(name=row["name"], shipped=True, defaults=row)


def unload(apps, schema_editor):
    apps.get_model("economics", "HardwareSpec").objects.filter(shipped=True).delete()


class Migration(migrations.Migration):
    dependencies = [("economics", "0001_initial")]
    operations = [migrations.RunPython(load, unload)]
