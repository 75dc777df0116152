"""The planner page, its CSV, POST /api/v1/plan and the backfill switch: who may do what, what they show."""

from __future__ import annotations

import csv
import io

import pytest

from dashboard.economics.models import BackfillPolicy
from dashboard.jobs.models import AuditEvent

from . import seed

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def utc(settings):
    settings.TIME_ZONE = "UTC"


def test_a_viewer_plans_the_example_workload(client, viewer):
    seed.priced_machine()
    client.force_login(viewer)
    r = client.get("/economics/plan/")
    assert r.status_code == 200
    html = r.content.decode()
    for section in ("plan-ranking-table", "plan-unified-table", "plan-streamed-table", "plan-gaps-table", "plan-methods"):
        assert f'id="{section}"' in html, section
    assert 'data-key="fleet:gpu-01"' in html
    assert "OnnxStream" in html
