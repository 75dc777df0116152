import pytest

from dashboard.alerts.models import AlertRule


@pytest.fixture
def own_rules_only(db) -> None:
    """Without the rules a fresh install gets for the fleet (alerts 0005: offline, losing samples),
    for tests that make their own rule of those kinds and count its alerts."""
    AlertRule.objects.filter(kind__in=("machine_offline", "spool_dropping"), created_by=None).delete()
