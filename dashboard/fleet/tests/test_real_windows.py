"""Windows recorded by the real agent on a real H100 (hwprobe/tests/fixtures/h100_device) are accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dashboard.fleet.ingest import store_batch
from dashboard.fleet.models import GpuSample
from dashboard.fleet.payload import parse_batch

FIXTURES = Path(__file__).resolve().parents[3] / "hwprobe" / "tests" / "fixtures" / "h100_device"


@pytest.mark.django_db
def test_the_real_agents_h100_windows_validate_and_store(machine):
    windows = [json.loads(line) for line in (FIXTURES / "windows_load.jsonl").read_text().splitlines()]
    sample = json.loads((FIXTURES / "sample_idle.json").read_text())
    samples = [{**w, "seq": i + 1} for i, w in enumerate(windows)]
    batch = parse_batch(
        json.dumps({"agent_version": "0.1.0", "inventory": sample["inventory"], "samples": samples}).encode()
    )
    result = store_batch(machine, batch)
    assert result.accepted == len(windows)
    assert GpuSample.objects.filter(machine=machine, util_percent_max__gte=99).exists()
    assert machine.accelerators.get().name == "NVIDIA H100 80GB HBM3"
