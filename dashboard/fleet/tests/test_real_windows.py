"""Windows recorded by the real agent on a real H100 and a real H200 (hwprobe/tests/fixtures/h100_device,
h200_device) are accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import GpuSample
from dashboard.fleet.payload import Batch, parse_batch

FIXTURES = Path(__file__).resolve().parents[3] / "hwprobe" / "tests" / "fixtures"


def recorded_batch(device: str) -> Batch:
    """The agent's windows under load on ``device``, numbered from 1, with its idle inventory."""
    windows = [json.loads(line) for line in (FIXTURES / device / "windows_load.jsonl").read_text().splitlines()]
    sample = json.loads((FIXTURES / device / "sample_idle.json").read_text())
    samples = [{**w, "seq": i + 1} for i, w in enumerate(windows)]
    body = {"agent_version": "0.1.0", "inventory": sample["inventory"], "samples": samples}
    return parse_batch(json.dumps(body).encode())


@pytest.mark.django_db
@pytest.mark.parametrize(("device", "name"), [("h100_device", "NVIDIA H100 80GB HBM3"), ("h200_device", "NVIDIA H200")])
def test_the_real_agents_windows_validate_and_store(machine, device, name):
    batch = recorded_batch(device)
    result = store_batch(machine, batch)
    assert result.accepted == len(batch.samples)
    assert GpuSample.objects.filter(machine=machine, util_percent_max__gte=99).exists()
    assert machine.accelerators.get().name == name


@pytest.mark.django_db
def test_the_real_h200_windows_store_their_gpm_metrics(machine):
    batch = recorded_batch("h200_device")
    store_batch(machine, batch)
    stored = GpuSample.objects.filter(machine=machine, tensor_util_percent_mean__gt=90)
    assert stored.count() == len(batch.samples) == 3  # the load ran through all three windows
    assert machine.accelerators.get().gpm_supported is True
