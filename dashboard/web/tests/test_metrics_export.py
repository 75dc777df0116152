"""GET /metrics: the fleet's latest values in the Prometheus format, parsed back with prometheus-client."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from conftest import make_batch
from dashboard.accounts.models import ApiToken
from dashboard.alerts.models import Alert, AlertRule
from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import Machine, MachineState
from dashboard.fleet.payload import parse_batch
from dashboard.jobs.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet(machine, operator) -> Machine:
    """gpu-01 online with 2 GPUs (GPU 1 cannot read its temperature), gpu-02 offline, some jobs, an alert."""
    batch = make_batch([1, 2], gpus=2, cpu=37.5, util=64.0)
    batch["dropped"] = 7
    batch["refused"] = 2
    batch["samples"][-1]["gpus"][1]["temp_c"] = None
    store_batch(machine, parse_batch(json.dumps(batch).encode()))
    stale = make_batch([1], gpus=1)
    old = Machine.objects.create(name="gpu-02")
    store_batch(old, parse_batch(json.dumps(stale).encode()))
    MachineState.objects.update_or_create(
        machine_id=old.pk, defaults={"last_seen_at": timezone.now() - timedelta(hours=1)}
    )
    for status in ("running", "failed", "failed"):
        Job.objects.create(name="j", kind="train", owner=operator, status=status)
    rule = AlertRule.objects.create(name="Offline", kind="machine_offline", threshold=5)
    Alert.objects.create(rule=rule, key=f"machine:{old.pk}", machine=old, message="gpu-02 is silent")
    machine.refresh_from_db()
    return machine


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics", **headers)
    assert r.status_code == 200
    assert r["Content-Type"] == CONTENT_TYPE_LATEST
    samples = {}
    for family in text_string_to_metric_families(r.content.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def gpu(index: int, machine: str = "gpu-01") -> tuple:
    return tuple(
        sorted(
            {
                "machine": machine,
                "gpu": str(index),
                "uuid": f"GPU-{index:08d}-test",
                "model": "NVIDIA H100 80GB HBM3",
            }.items()
        )
    )


def test_it_exports_the_latest_values_with_machine_and_gpu_labels(client, fleet, viewer):
    token = ApiToken.issue(viewer, "prometheus")
    samples = scrape(client, HTTP_AUTHORIZATION=f"Bearer {token}")
    m = (("machine", "gpu-01"),)
    assert samples[("hwdash_machine_online", m)] == 1.0
    assert samples[("hwdash_machine_last_seen_timestamp_seconds", m)] == pytest.approx(fleet.last_seen_at.timestamp())
    assert samples[("hwdash_cpu_percent", m)] == 37.5
    assert samples[("hwdash_memory_used_bytes", m)] == 64e9
    assert samples[("hwdash_memory_total_bytes", m)] == 256 * 2**30
    assert samples[("hwdash_spool_dropped_total", m)] == 7.0
    assert samples[("hwdash_spool_refused_total", m)] == 2.0
    for i in (0, 1):
        assert samples[("hwdash_gpu_utilization_percent", gpu(i))] == 64.0
        assert samples[("hwdash_gpu_memory_used_bytes", gpu(i))] == 40e9
        assert samples[("hwdash_gpu_memory_total_bytes", gpu(i))] == 85520809984
        assert samples[("hwdash_gpu_power_watts", gpu(i))] == 350.0
    assert samples[("hwdash_gpu_temperature_celsius", gpu(0))] == 55.0
    # A value the agent could not read is left out, not exported as 0.
    assert ("hwdash_gpu_temperature_celsius", gpu(1)) not in samples


def test_an_offline_machine_exports_only_its_state(client, fleet, viewer):
    client.force_login(viewer)
    samples = scrape(client)
    m = (("machine", "gpu-02"),)
    assert samples[("hwdash_machine_online", m)] == 0.0
    assert ("hwdash_machine_last_seen_timestamp_seconds", m) in samples
    assert ("hwdash_cpu_percent", m) not in samples
    assert not any(
        dict(labels).get("machine") == "gpu-02" for name, labels in samples if name.startswith("hwdash_gpu_")
    )


def test_it_counts_jobs_by_status_and_open_alerts_by_kind(client, fleet, viewer):
    client.force_login(viewer)
    samples = scrape(client)
    assert samples[("hwdash_jobs", (("status", "failed"),))] == 2.0
    assert samples[("hwdash_jobs", (("status", "running"),))] == 1.0
    assert samples[("hwdash_jobs", (("status", "queued"),))] == 0.0
    assert samples[("hwdash_alerts_open", (("kind", "machine_offline"),))] == 1.0
    assert samples[("hwdash_alerts_open", (("kind", "gpu_temperature"),))] == 0.0


def test_the_spool_counter_is_typed_as_a_counter(client, fleet, viewer):
    client.force_login(viewer)
    text = client.get("/metrics").content.decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["hwdash_spool_dropped"] == "counter"
    assert types["hwdash_spool_refused"] == "counter"
    assert types["hwdash_gpu_temperature_celsius"] == "gauge"


def test_it_needs_a_token_or_a_session(client, fleet, viewer):
    r = client.get("/metrics")
    assert r.status_code == 401 and "error" in r.json() and r["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer hwu_wrong_token").status_code == 401
    token = ApiToken.issue(viewer)
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    ApiToken.objects.update(revoked_at=timezone.now())
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401
    # An agent's machine token is not a user's token.
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {fleet.issue_token()}").status_code == 401


def test_an_empty_fleet_still_scrapes(client, viewer):
    client.force_login(viewer)
    samples = scrape(client)
    assert samples[("hwdash_jobs", (("status", "queued"),))] == 0.0
