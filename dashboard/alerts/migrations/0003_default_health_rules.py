"""A fresh install watches GPU health from the start: one rule of each health kind, enabled, for
every machine and without a webhook (add one in the rule's form). The allocated-but-idle rule is
created disabled: when enabled it may warn owners and stop jobs. A kind that already has a rule
is left alone, so the migration never duplicates what an admin set up."""

from django.db import migrations

DEFAULTS = [
    # kind, name, threshold, enabled, extra fields
    ("gpu_xid", "GPU XID errors", 60, True, {}),
    ("gpu_ecc_uncorrectable", "Uncorrectable ECC errors", 0, True, {}),
    # NVIDIA's page-retirement guidance: a board with 60 or more retired pages qualifies for an RMA.
    ("gpu_memory_remap", "Retired pages or row remapping", 60, True, {}),
    ("gpu_throttle", "Sustained thermal or power-brake throttling", 10, True, {}),
    ("gpu_missing", "GPU no longer listed by NVML", 2, True, {}),
    ("gpu_nvml_errors", "NVML errors reading a GPU", 30, True, {}),
    ("ghost_memory", "GPU memory held outside any job", 30, True, {}),
    ("job_allocated_idle", "Job holds GPUs it barely uses", 30, False, {"level": 10.0, "action": "warn"}),
]


def create(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    for kind, name, threshold, enabled, extra in DEFAULTS:
        if not AlertRule.objects.filter(kind=kind).exists():
            AlertRule.objects.create(name=name, kind=kind, threshold=threshold, enabled=enabled, **extra)


def remove(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    for kind, name, _, _, _ in DEFAULTS:
        AlertRule.objects.filter(kind=kind, name=name, created_by=None).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0002_health_ghosts_idle")]

    operations = [migrations.RunPython(create, remove)]
